# Sourced by k8s/images.sh, tests/containers/run.sh and tests/apiserver/build.sh: the tools of the
# container tier, their install step, the check run before the first container starts, and what a
# tier that cannot run does (a skip with the reason, or a failure under FLYWHEEL_REQUIRE_TIERS=1).

# What the container tier needs, as Debian packages. Installed without recommends, so that this
# list decides and not apt's configuration: podman depends on "crun | runc" (crun refuses a hybrid
# cgroup layout: "cgroups in hybrid mode not supported"; the tier pins runc in
# tests/containers/containers.conf) and only recommends catatonit, the pause process of the pod
# `podman kube play` starts ("finding pause binary: catatonit: executable file not found").
CONTAINER_PACKAGES=(buildah podman runc catatonit mmdebstrap uidmap iproute2)
CONTAINER_INSTALL="apt-get install --no-install-recommends ${CONTAINER_PACKAGES[*]}"
# The commands the tier runs, from those packages (catatonit is looked up where podman looks).
CONTAINER_COMMANDS=(buildah podman runc catatonit mmdebstrap newuidmap ip)
# The tier's podman settings: the OCI runtime it needs and the limits this kind of machine accepts.
TIER_CONTAINERS_CONF="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/containers/containers.conf"

# tier_unavailable <sentence>: end the calling script for a tier that cannot run here. Under
# FLYWHEEL_REQUIRE_TIERS=1 (.ci/run) that is a failure (exit 1): a missing tool is an install step
# to add, not a skip. Otherwise a skip (exit 0) with the sentence, as `make container-test` on a
# machine without the tools reports it.
tier_unavailable() {
  if [ "${FLYWHEEL_REQUIRE_TIERS:-}" = 1 ]; then
    echo "FAILED (FLYWHEEL_REQUIRE_TIERS=1): $1" >&2
    exit 1
  fi
  echo "SKIPPED: $1"
  exit 0
}

# podman_helper <name> [containers.conf]: the helper binary podman 4 would run (catatonit), printed;
# 1 when there is none. Looked up as podman does: the conf's helper_binaries_dir (one line), else
# podman's default directories, then PATH.
podman_helper() {
  local conf="${2:-$TIER_CONTAINERS_CONF}" dirs dir
  dirs="$(sed -n 's/^[[:space:]]*helper_binaries_dir[[:space:]]*=[[:space:]]*\[\(.*\)\]/\1/p' "$conf" | grep -o '"[^"]*"' | tr -d '"')"
  [ -n "$dirs" ] || dirs=$'/usr/local/libexec/podman\n/usr/local/lib/podman\n/usr/libexec/podman\n/usr/lib/podman'
  while IFS= read -r dir; do
    if [ -x "$dir/$1" ]; then echo "$dir/$1"; return 0; fi
  done <<<"$dirs"
  command -v "$1"
}

# missing_commands <command>...: those of the commands this machine lacks, printed on one line.
missing_commands() {
  local missing=() tool
  for tool in "$@"; do
    if [ "$tool" = catatonit ]; then podman_helper catatonit >/dev/null || missing+=(catatonit)
    else command -v "$tool" >/dev/null || missing+=("$tool")
    fi
  done
  echo "${missing[*]}"
}

# install_container_tools <what> <command>...: as root with apt-get, install the tier's packages when
# any of the commands is missing. Elsewhere nothing: the check that follows names what is missing.
install_container_tools() {
  local what="$1" missing; shift
  missing="$(missing_commands "$@")"
  [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 0
  echo "$what: installing ${CONTAINER_PACKAGES[*]} (missing: $missing)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${CONTAINER_PACKAGES[@]}" >/dev/null
}

# container_preflight <what> [containers.conf]: can the container tier start its containers here?
# Silent with status 0 when it can. Otherwise prints one sentence naming everything that is
# missing, with the command that installs it, and returns 1. It checks root (rootful podman, the
# tier's own network namespace), the commands, catatonit where podman looks for it, the OCI runtime
# podman really picks with the tier's containers.conf (runc, present), the storage podman opens
# (overlay or vfs, container_storage_flags) and that a network namespace can be made.
container_preflight() {
  local what="$1" conf="${2:-$TIER_CONTAINERS_CONF}" problems=() missing runtime ns out
  # bash scoping is dynamic: podman_helper (through missing_commands) reads this conf too.
  local TIER_CONTAINERS_CONF="$conf"
  local root=0; [ "$(id -u)" = 0 ] && root=1
  [ "$root" = 1 ] || problems+=("it must run as root (rootful podman in its own network namespace)")
  missing="$(missing_commands "${CONTAINER_COMMANDS[@]}")"
  if [ -n "$missing" ]; then
    local named="${missing// /, }"
    [[ "$missing" == *" "* ]] && named="${named%, *} and ${named##*, } are" || named+=" is"
    problems+=("$named missing (as root: $CONTAINER_INSTALL)")
  fi
  if [ "$root" = 1 ] && [[ " $missing " != *" podman "* && " $missing " != *" runc "* ]]; then
    local storage=()
    mapfile -t storage < <(container_storage_flags)
    # podman info opens the storage and resolves the runtime as a container start would.
    if ! runtime="$(CONTAINERS_CONF="$conf" podman "${storage[@]}" info --format '{{.Host.OCIRuntime.Name}}' 2>&1)"; then
      problems+=("podman fails with $conf: $(tail -n 1 <<<"$runtime")")
    elif [ "$runtime" != runc ]; then
      problems+=("podman would run its containers with $runtime, not runc ($conf must say [engine] runtime = \"runc\": crun refuses a hybrid cgroup layout)")
    fi
  fi
  if [ "$root" = 1 ] && [[ " $missing " != *" ip "* ]]; then
    ns="flywheel-preflight-$$"
    if out="$(ip netns add "$ns" 2>&1)"; then ip netns del "$ns"
    else problems+=("a network namespace cannot be made (ip netns add: $out)")
    fi
  fi
  [ "${#problems[@]}" -eq 0 ] && return 0
  local sentence="${problems[0]}" i
  for ((i = 1; i < ${#problems[@]}; i++)); do sentence+="; ${problems[i]}"; done
  echo "$what cannot run here: $sentence."
  return 1
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
