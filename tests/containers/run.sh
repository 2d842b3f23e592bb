#!/usr/bin/env bash
# `make container-test`: install what the container tier needs (as root with apt-get), check it
# before the first container starts, build the images (and the test-support image), then run the
# tier. A machine where it cannot run gets one sentence naming what is missing: a skip, or a
# failure under FLYWHEEL_REQUIRE_TIERS=1 (.ci/run).
#   --check   install and check only (`make container-tools`); other arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/../.."
. k8s/container-tools.sh
install_container_tools container-test "${CONTAINER_COMMANDS[@]}"
why="$(container_preflight container-test)" || tier_unavailable "$why"
if [ "${1:-}" = --check ]; then
  echo "container-test: can run here (runc, catatonit, $(container_storage_driver) storage, own network namespace)"
  exit 0
fi
bash k8s/images.sh --support
# One process: the tier enters its own network namespace, and its containers share one storage.
exec "${PY:-.venv/bin/python}" -m pytest tests/containers -o addopts= -p no:randomly -p no:xdist -v "$@"
