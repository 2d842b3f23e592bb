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
