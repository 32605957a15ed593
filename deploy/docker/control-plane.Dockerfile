# syntax=docker/dockerfile:1
# loraplex control plane: the router (`loraplex router`) and the operator (`loraplex operator`)
# in one slim image without torch; the Helm chart picks the subcommand with the container args.
#
# Build from the repository root (the build context must contain pyproject.toml):
#   docker build -f deploy/docker/control-plane.Dockerfile -t REGISTRY/loraplex-control-plane:0.1.0 .
#   docker push REGISTRY/loraplex-control-plane:0.1.0

ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/loraplex
ENV PATH=/opt/loraplex/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY loraplex ./loraplex
COPY router ./router
COPY worker ./worker
COPY operator ./operator
RUN pip install ".[router,operator]" \
 && python -c "import kopf, kubernetes_asyncio; import loraplex.router.app" \
 && ! python -c "import torch" 2>/dev/null

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
