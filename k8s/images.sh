#!/usr/bin/env bash
# Build Flywheel's images from the project's Dockerfiles (what `make images` runs).
#
# Tags are immutable: <version>-<hash of uv.lock, pyproject.toml and the sources>
# (pipelines/image_tag.py), so a rebuilt image never hides behind an old tag in KFP's cache.
#
#   IMAGE_REGISTRY   registry/org prefix                  (default ghcr.io/flywheel)
#   IMAGE_TAG        tag for every image                  (default: the source-derived tag)
#   BASE_IMAGE       Debian bookworm image with python3   (default localhost/flywheel-base:bookworm-<key>,
#                    made here with mmdebstrap, its root filesystem cached as a tarball in
#                    FLYWHEEL_IMAGE_CACHE, default /var/tmp/flywheel-images)
#   BUILDER          buildah or docker                    (default: buildah, else docker)
#   CONTAINER_ROOT   buildah/podman storage, one root per driver  (default /var/lib/flywheel-containers)
#   CONTAINER_STORAGE_DRIVER  overlay or vfs              (default: overlay where the kernel mounts it, else vfs)
# Flags: --print   print the build commands and build nothing
#        --support also build the test-support image of `make container-test`
# The component image is built first: the serving and monitor images are built FROM it, and the
# monitor records its reference (what a retrain compiles against).
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
# The base is keyed on how it is made (suite, variant, packages, hook): a change to any of them is
# a new tarball and a new tag, never an old base under the same name.
base_args=(--variant=minbase --include=python3,python3-venv,ca-certificates,libgomp1
           --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr bookworm)
base_key="$(printf '%s ' "${base_args[@]}" | sha256sum | cut -c1-12)"
base="${BASE_IMAGE:-localhost/flywheel-base:bookworm-$base_key}"
cache="${FLYWHEEL_IMAGE_CACHE:-/var/tmp/flywheel-images}"
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

# shellcheck source=k8s/container-tools.sh
. k8s/container-tools.sh
if [ "$builder" = buildah ]; then
  # chroot isolation builds inside this kind of sandbox; the storage driver is overlay where the
  # kernel allows it, else vfs (container_storage_flags).
  mapfile -t storage < <(container_storage_flags)
  build=(buildah "${storage[@]}" bud --isolation chroot --layers --ulimit nofile=1024:20000 "${secret[@]}")
else
  build=(docker build "${secret[@]}")
fi

run() {
  echo "+ $*"
  [ "$print" = 1 ] || "$@"
}

if [ "$print" = 0 ] && [ "$builder" = buildah ]; then
  install_container_tools images buildah podman mmdebstrap
  missing="$(missing_commands buildah podman mmdebstrap)"
  [ -z "$missing" ] || tier_unavailable "images cannot be built here: missing ${missing// /, } (as root: $CONTAINER_INSTALL)."
fi

# The base: Debian bookworm minbase + python3 (3.11), from Debian's packages with mmdebstrap,
# since no registry image can be pulled here. Its tarball is cached outside the repository.
# mmdebstrap rather than debootstrap: the same package set (its merged-usr hook installs
# usr-is-merged, as debootstrap does, not usrmerge and perl) in half the time (26 s against 54 s
# on a quiet machine, 2026-12-05), and it is the head of every fresh image build.
if [ "$print" = 0 ] && [ "$builder" = buildah ] && [ -z "${BASE_IMAGE:-}" ] \
   && ! podman "${storage[@]}" image exists "$base"; then
  tarball="$cache/bookworm-python3-$base_key.tar"
  if [ ! -f "$tarball" ]; then
    mkdir -p "$cache"
    rootfs="$(mktemp -d "$cache/rootfs.XXXXXX")"
    echo "images: mmdebstrap bookworm minbase + python3 -> $tarball"
    mmdebstrap "${base_args[@]}" "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$cache/mmdebstrap.log" 2>&1 \
      || { echo "images: mmdebstrap failed, see $cache/mmdebstrap.log" >&2; rm -rf "$rootfs"; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
    tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  podman "${storage[@]}" import --quiet "$tarball" "$base" >/dev/null
fi

# image <ref> <build args>...: build <ref>, unless buildah's storage already holds it. The tag is
# derived from every file the build reads, so an image under it is this build (IMAGES_REBUILD=1
# builds anyway).
image() {
  local ref="$1"; shift
  if [ "$print" = 0 ] && [ "$builder" = buildah ] && [ "${IMAGES_REBUILD:-0}" != 1 ] \
     && podman "${storage[@]}" image exists "$ref"; then
    echo "images: $ref is built (its tag is derived from its sources); kept"
    return
  fi
  run "${build[@]}" "$@" -t "$ref" .
}

image "$components" -f components/Dockerfile --build-arg "BASE_IMAGE=$base" --build-arg "COMPONENT_IMAGE=$components"
# The serving and monitor images are the component image with their own entry points (no files of their own).
image "${registry}/flywheel-serving:${tag}" -f services/serving/Dockerfile --build-arg "COMPONENTS_IMAGE=$components"
image "${registry}/flywheel-monitor:${tag}" -f services/monitoring/Dockerfile --build-arg "COMPONENTS_IMAGE=$components"
if [ "$support" = 1 ]; then
  # Its Dockerfile is outside the tagged sources: always asked of buildah (its layers are cached).
  run "${build[@]}" -f tests/containers/support.Dockerfile --build-arg "BASE_IMAGE=$base" \
    -t "localhost/flywheel-test-support:${tag}" .
fi
if [ "$print" = 0 ] && [ "$builder" = buildah ]; then
  # Older builds of these images only fill the disk: drop their tags.
  podman "${storage[@]}" images --format '{{.Repository}}:{{.Tag}}' \
    | grep -E "^(${registry}/flywheel-(components|serving|monitor)|localhost/flywheel-test-support):" \
    | grep -v ":${tag}\$" | xargs -r podman "${storage[@]}" rmi >/dev/null 2>&1 || true
fi
echo "images: tag ${tag} (${registry}/flywheel-{components,serving,monitor}:${tag})"
