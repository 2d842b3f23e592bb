# The test-support image of `make container-test`: the project's locked environment with
# the dev group (moto's S3 server), for the S3 server and the KFP API fake containers.
# The test mounts tests/ into it read-only; nothing of the project is installed.
# The builder stage of components/Dockerfile, line for line up to the dependency sync, so
# those layers come from the cache of `make images`; the image is that stage with the dev group.

# checkov:skip=CKV_DOCKER_7: the base is a build argument: a Debian bookworm image with python3 that k8s/images.sh names (made with mmdebstrap here, python:3.11-slim-bookworm elsewhere)
ARG BASE_IMAGE=localhost/flywheel-base:bookworm-gomp
FROM ${BASE_IMAGE} AS builder
ARG UV_VERSION=0.13.9
# uv from PyPI (pinned), in its own venv: only the package registry is needed, no binary download.
# The build host's CA bundle comes in as a build secret (k8s/images.sh passes it when it has
# one), for networks whose TLS goes through a proxy; it never lands in a layer.
RUN --mount=type=secret,id=ca-certificates \
    ca=/run/secrets/ca-certificates; if [ -s "$ca" ]; then export PIP_CERT="$ca"; fi; \
    python3 -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=python3 \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
# Dependencies first (only the lock file decides them), so code edits keep this layer cached.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=ca-certificates \
    ca=/run/secrets/ca-certificates; if [ -s "$ca" ]; then export SSL_CERT_FILE="$ca"; fi; \
    /opt/uv/bin/uv sync --frozen --no-dev --no-install-project
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=ca-certificates \
    ca=/run/secrets/ca-certificates; if [ -s "$ca" ]; then export SSL_CERT_FILE="$ca"; fi; \
    /opt/uv/bin/uv sync --frozen --no-install-project

# The builder stage itself, not a copy of its venv into a fresh base: a test-support image need not
# be small, and the copy was a whole second layer of the environment (minutes to write).
FROM builder AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
WORKDIR /tmp
USER 10001:10001
HEALTHCHECK NONE
