#!/usr/bin/env bash
# Build Flywheel's images from the project's Dockerfiles (what `make images` runs).
#
# Tags are immutable: <version>-<hash of uv.lock, pyproject.toml and the sources>
# (pipelines/image_tag.py), so a rebuilt image never hides behind an old tag in KFP's cache.
#
#   IMAGE_REGISTRY   registry/org prefix                  (default ghcr.io/flywheel)
#   IMAGE_TAG        tag for every image                  (default: the source-derived tag)
#   BASE_IMAGE       Debian bookworm image with python3   (default localhost/flywheel-base:bookworm,
#                    made here with debootstrap, its root filesystem cached as a tarball in
#                    FLYWHEEL_IMAGE_CACHE, default /var/tmp/flywheel-images)
#   BUILDER          buildah or docker                    (default: buildah, else docker)
#   CONTAINER_ROOT   buildah/podman storage (vfs)         (default /var/lib/flywheel-containers)
# Flags: --print   print the build commands and build nothing
#        --support also build the test-support image of `make container-test`
# The component image is built first: the monitor image builds FROM it.
set -euo pipefail
cd "$(dirname "$0")/.."

print=0 support=0
for arg in "$@"; do
  case "$arg" in
    --print) print=1 ;;
    --support) support=1 ;;
    *) echo "images.sh: unknown flag $arg (use --print or --support)" >&2; exit 2 ;;
  esac
done

registry="${IMAGE_REGISTRY:-ghcr.io/flywheel}"
tag="${IMAGE_TAG:-$("${PYTHON:-python3}" pipelines/image_tag.py .)}"
base="${BASE_IMAGE:-localhost/flywheel-base:bookworm}"
cache="${FLYWHEEL_IMAGE_CACHE:-/var/tmp/flywheel-images}"
root="${CONTAINER_ROOT:-/var/lib/flywheel-containers}"
components="${registry}/flywheel-components:${tag}"

builder="${BUILDER:-}"
if [ -z "$builder" ]; then
  if command -v buildah >/dev/null; then builder=buildah
  elif command -v docker >/dev/null; then builder=docker
  else builder=buildah
  fi
fi

# The host's CA bundle, as a build secret: TLS through a proxy verifies inside the build too.
ca="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
secret=()
[ -s "$ca" ] && secret=(--secret "id=ca-certificates,src=$ca")

if [ "$builder" = buildah ]; then
  # vfs + chroot isolation: the only combination that builds inside this kind of sandbox.
  storage=(--root "$root/storage" --runroot "$root/run" --storage-driver vfs)
  build=(buildah "${storage[@]}" bud --isolation chroot --layers --ulimit nofile=1024:20000 "${secret[@]}")
else
  build=(docker build "${secret[@]}")
fi

run() {
  echo "+ $*"
  [ "$print" = 1 ] || "$@"
}

if [ "$print" = 0 ] && [ "$builder" = buildah ]; then
  # shellcheck source=k8s/container-tools.sh
  . k8s/container-tools.sh
  ensure_container_tools images buildah podman runc debootstrap newuidmap || exit 0
fi

# The base: Debian bookworm minbase + python3 (3.11), from Debian's packages with debootstrap,
# since no registry image can be pulled here. Its tarball is cached outside the repository.
if [ "$print" = 0 ] && [ "$builder" = buildah ] && [ -z "${BASE_IMAGE:-}" ] \
   && ! podman "${storage[@]}" image exists "$base"; then
  tarball="$cache/bookworm-python3.tar"
  if [ ! -f "$tarball" ]; then
    mkdir -p "$cache"
    rootfs="$(mktemp -d "$cache/rootfs.XXXXXX")"
    echo "images: debootstrap bookworm minbase + python3 -> $tarball"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$cache/debootstrap.log" 2>&1 \
      || { echo "images: debootstrap failed, see $cache/debootstrap.log" >&2; rm -rf "$rootfs"; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
    tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  podman "${storage[@]}" import --quiet "$tarball" "$base" >/dev/null
fi

run "${build[@]}" -f components/Dockerfile --build-arg "BASE_IMAGE=$base" \
  --build-arg "COMPONENT_IMAGE=$components" -t "$components" .
run "${build[@]}" -f services/serving/Dockerfile --build-arg "BASE_IMAGE=$base" \
  -t "${registry}/flywheel-serving:${tag}" .
run "${build[@]}" -f services/monitoring/Dockerfile --build-arg "COMPONENTS_IMAGE=$components" --build-arg "BASE_IMAGE=$base" \
  -t "${registry}/flywheel-monitor:${tag}" .
if [ "$support" = 1 ]; then
  run "${build[@]}" -f tests/containers/support.Dockerfile --build-arg "BASE_IMAGE=$base" \
    -t "localhost/flywheel-test-support:${tag}" .
fi
if [ "$print" = 0 ] && [ "$builder" = buildah ]; then
  # Older builds of these images only fill the disk (a full copy per layer under vfs): drop their tags.
  podman "${storage[@]}" images --format '{{.Repository}}:{{.Tag}}' \
    | grep -E "^(${registry}/flywheel-(components|serving|monitor)|localhost/flywheel-test-support):" \
    | grep -v ":${tag}\$" | xargs -r podman "${storage[@]}" rmi >/dev/null 2>&1 || true
fi
echo "images: tag ${tag} (${registry}/flywheel-{components,serving,monitor}:${tag})"
