#!/usr/bin/env bash
# `make container-test`: build the images (and the test-support image), then run the container
# tier. Skips with one line naming what is missing on a machine without the container tools
# when it cannot install them.
set -euo pipefail
cd "$(dirname "$0")/../.."
. k8s/container-tools.sh
ensure_container_tools container-test buildah podman runc debootstrap newuidmap ip || exit 0
bash k8s/images.sh --support
# One process: the tier enters its own network namespace, and its containers share one storage.
exec "${PY:-.venv/bin/python}" -m pytest tests/containers -o addopts= -p no:randomly -p no:xdist -v "$@"
