# syntax=docker/dockerfile:1
# loraplex GPU worker: one base model on one GPU (`loraplex worker`).
#
# Build from the repository root (the build context must contain pyproject.toml):
#   docker build -f deploy/docker/worker.Dockerfile -t REGISTRY/loraplex-worker:0.1.0 .
#   docker push REGISTRY/loraplex-worker:0.1.0
# Pick another CUDA build of torch with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# (the base image's CUDA runtime must not be newer than what the nodes' driver supports).
#
# Installed from requirements.lock (docs/install.md) except torch: the lock holds torch's CPU
# build, so the CUDA build of the same version comes first from PyTorch's CUDA index, then the
# lock's other packages the worker needs, at the lock's versions and hash-checked.

ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_RUNTIME_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# The lock's torch version (requirements.lock pins its CPU build, torch==2.13.0+cpu).
ARG TORCH_VERSION=2.13.0
ARG UV_VERSION=0.13.9
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1 UV_PYTHON_DOWNLOADS=never
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
# uv, bootstrapped by pip into a venv of its own that stays in this stage.
RUN python3 -m venv /opt/uv \
 && /opt/uv/bin/pip install --no-deps "uv==${UV_VERSION}"
ENV PATH=/opt/loraplex/bin:/opt/uv/bin:$PATH VIRTUAL_ENV=/opt/loraplex
RUN uv venv --python /usr/bin/python3 /opt/loraplex
# 1. CUDA torch first, with the CUDA runtime wheels it depends on (nvidia-*, triton), from
#    PyTorch's CUDA index; before the sources, so this large layer survives code changes.
RUN uv pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY loraplex ./loraplex
COPY router ./router
COPY worker ./worker
COPY operator ./operator
# 2. The rest from the lock, hashes required: the worker extra's dependencies plus the packages
#    the lock has for torch (sympy, networkx, jinja2, … "via torch"), moved to the lock's
#    versions. torch is left out of this resolution (--excludes), so the CUDA build stays.
# 3. The project itself, without dependencies; setuptools pinned and hash-checked by the lock.
# Then: consistent, and a CUDA build of the lock's torch version (python -P: /src/operator
# must not shadow the stdlib).
RUN awk '/^[^ #]/ { skip = /^torch==/ } !skip' requirements.lock > lock-without-torch.txt \
 && awk '/^[^ #]/ { pin = $1 } /^ +# +(via +)?torch$/ { print pin }' \
      requirements.lock > torch-deps.txt \
 && test -s torch-deps.txt \
 && echo torch > torch.txt \
 && uv pip install --require-hashes --constraint lock-without-torch.txt --excludes torch.txt \
      -r pyproject.toml --extra worker -r torch-deps.txt \
 && uv pip install --no-deps --build-constraint lock-without-torch.txt . \
 && uv pip check \
 && python -P -c "import torch, diffusers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda); assert torch.__version__.split('+')[0] == '${TORCH_VERSION}' and torch.version.cuda, 'not the CUDA build of the lock torch'"

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
    LORAPLEX_WORKER_PORT=8000 \
    LORAPLEX_WORKER_METRICS_PORT=9100
VOLUME ["/models"]
USER 10001:10001
# 8000: /v1/generate and /v1/state (router only, shared secret); 9100: health and /metrics.
EXPOSE 8000 9100
ENTRYPOINT ["loraplex"]
CMD ["worker"]
