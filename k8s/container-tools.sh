# Sourced by k8s/images.sh and tests/containers/run.sh: make sure the container tools exist.
# As root, what is missing is installed from Debian's packages; otherwise the caller skips
# with one line naming what is missing (never silently).
# ensure_container_tools <what> <tool>...   returns 1 after printing the skip line.
ensure_container_tools() {
  local what="$1"; shift
  local missing=() tool
  for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "$what: SKIPPED, missing ${missing[*]} (as root: apt-get install buildah podman runc debootstrap uidmap iproute2)"
    return 1
  fi
  echo "$what: installing buildah podman runc debootstrap uidmap iproute2 (missing: ${missing[*]})"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    buildah podman runc debootstrap uidmap iproute2 >/dev/null
}

# container_storage_driver: the storage driver for buildah and podman on this machine, printed.
# CONTAINER_STORAGE_DRIVER wins when set. Otherwise overlay where the kernel mounts an overlay
# for us (root, a kernel with overlayfs): layers are shared, a build or a container start costs
# seconds. Else vfs, which works in any sandbox but copies the whole tree for every layer and
# every container (minutes per image, minutes per `podman run`).
container_storage_driver() {
  if [ -n "${CONTAINER_STORAGE_DRIVER:-}" ]; then echo "$CONTAINER_STORAGE_DRIVER"; return; fi
  # The trial mount is made where the storage will live: overlay on some filesystems (an overlay
  # itself, say) refuses what it accepts on others.
  local probe driver=vfs root="${CONTAINER_ROOT:-/var/lib/flywheel-containers}"
  if [ "$(id -u)" = 0 ] && mkdir -p "$root" && probe="$(mktemp -d "$root/.driver-probe.XXXXXX")"; then
    mkdir -p "$probe"/{lower,upper,work,merged}
    if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
         "$probe/merged" 2>/dev/null; then
      umount "$probe/merged"; driver=overlay
    fi
    rm -rf "$probe"
  fi
  echo "$driver"
}

# container_storage_flags: buildah/podman flags for the project's storage, one per line:
# a root per driver under CONTAINER_ROOT (default /var/lib/flywheel-containers), since a
# storage made with one driver refuses the other.
container_storage_flags() {
  local driver root="${CONTAINER_ROOT:-/var/lib/flywheel-containers}"
  driver="$(container_storage_driver)"
  printf '%s\n' --root "$root/$driver/storage" --runroot "$root/$driver/run" --storage-driver "$driver"
}
