# syntax=docker/dockerfile:1
# loraplex control plane: the router (`loraplex router`) and the operator (`loraplex operator`)
# in one slim image without torch; the Helm chart picks the subcommand with the container args.
#
# Build from the repository root (the build context must contain pyproject.toml):
#   docker build -f deploy/docker/control-plane.Dockerfile -t REGISTRY/loraplex-control-plane:0.1.0 .
#   docker push REGISTRY/loraplex-control-plane:0.1.0
#
# Installed from requirements.lock (docs/install.md): only the packages the router and operator
# extras need, each at the lock's version and checked against the lock's hashes. Python 3.11,
# the version the lock is resolved for.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG UV_VERSION=0.13.9
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1 UV_PYTHON_DOWNLOADS=never
# uv, bootstrapped by pip into a venv of its own that stays in this stage.
RUN python -m venv /opt/uv \
 && /opt/uv/bin/pip install --no-deps "uv==${UV_VERSION}"
ENV PATH=/opt/loraplex/bin:/opt/uv/bin:$PATH VIRTUAL_ENV=/opt/loraplex
RUN uv venv --python /usr/local/bin/python3 /opt/loraplex
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY loraplex ./loraplex
COPY router ./router
COPY worker ./worker
COPY operator ./operator
# 1. The extras' dependencies, with the lock as constraints: --require-hashes makes every
#    package come from the lock with a matching hash (one the lock lacks fails the build).
# 2. The project itself, without dependencies; its build backend (setuptools) pinned and
#    hash-checked by the lock too.
# Then: consistent, importable (python -P: /src/operator must not shadow the stdlib), no torch.
RUN uv pip install --require-hashes --constraint requirements.lock \
      -r pyproject.toml --extra router --extra operator \
 && uv pip install --no-deps --build-constraint requirements.lock . \
 && uv pip check \
 && python -P -c "import kopf, kubernetes_asyncio; import loraplex.router.app" \
 && ! python -P -c "import torch" 2>/dev/null

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 loraplex \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin loraplex
COPY --from=build /opt/loraplex /opt/loraplex
# Read-only root filesystem in the cluster: HOME and HF_HOME point at emptyDir mounts.
ENV PATH=/opt/loraplex/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HOME=/cache/huggingface \
    HF_HUB_DISABLE_TELEMETRY=1 \
    LORAPLEX_ROUTER_HOST=0.0.0.0 \
    LORAPLEX_ROUTER_PORT=8080
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["loraplex"]
CMD ["router"]
