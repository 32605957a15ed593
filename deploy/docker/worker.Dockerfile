# syntax=docker/dockerfile:1
# loraplex GPU worker: one base model on one GPU (`loraplex worker`).
#
# Build from the repository root (the build context must contain pyproject.toml):
#   docker build -f deploy/docker/worker.Dockerfile -t REGISTRY/loraplex-worker:0.1.0 .
#   docker push REGISTRY/loraplex-worker:0.1.0
# Pick another CUDA build of torch with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# (the base image's CUDA runtime must not be newer than what the nodes' driver supports).

ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_RUNTIME_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/loraplex
ENV PATH=/opt/loraplex/bin:$PATH
# CUDA torch first, so installing the worker extra keeps it (pip sees torch already satisfied).
RUN pip install --index-url "${TORCH_INDEX_URL}" torch
WORKDIR /src
COPY pyproject.toml README.md ./
COPY loraplex ./loraplex
COPY router ./router
COPY worker ./worker
COPY operator ./operator
RUN pip install ".[worker]" \
 && python -c "import torch, diffusers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

FROM ${CUDA_RUNTIME_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 loraplex \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin loraplex \
 && mkdir -p /models/hf \
 && chown -R 10001:10001 /models
COPY --from=build /opt/loraplex /opt/loraplex
# The HF cache (weights and adapters: the disk tier) lives on a volume at /models, where the
# operator mounts the pool's cache volume (an emptyDir by default, or the shared model-cache
# PVC) and points HF_HOME; the root filesystem can stay read-only with /tmp on an emptyDir.
ENV PATH=/opt/loraplex/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HOME=/models/hf \
    HF_HUB_DISABLE_TELEMETRY=1 \
    LORAPLEX_WORKER_HOST=0.0.0.0 \
    LORAPLEX_WORKER_PORT=8000
VOLUME ["/models"]
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["loraplex"]
CMD ["worker"]
