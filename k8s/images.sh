#!/bin/sh
# Print the `docker build` commands for Flywheel's images (pipe to `sh` to run them).
#   IMAGE_REGISTRY  registry/org prefix   (default ghcr.io/flywheel)
#   IMAGE_TAG       tag for every image   (default 0.1.0)
# The component image is built first: the monitor image builds FROM it.
set -eu
registry="${IMAGE_REGISTRY:-ghcr.io/flywheel}"
tag="${IMAGE_TAG:-0.1.0}"
components="${registry}/flywheel-components:${tag}"
echo "docker build -f components/Dockerfile -t ${components} ."
echo "docker build -f services/serving/Dockerfile -t ${registry}/flywheel-serving:${tag} ."
echo "docker build -f services/monitoring/Dockerfile --build-arg BASE_IMAGE=${components} -t ${registry}/flywheel-monitor:${tag} ."
