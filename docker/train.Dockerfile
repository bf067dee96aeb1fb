# syntax=docker/dockerfile:1.7
# The GPU training image: `python -m common.train SPEC_URI` with CUDA torch, transformers, peft,
# trl, accelerate, bitsandbytes and unsloth. The Kubernetes runner starts every backend's Jobs
# from it (TRAINYARD_K8S_IMAGE); with resources.gpus > 1 it runs torchrun, one process per GPU.
# docker-compose also runs the trainer services from it, since the local runner trains in-process.
# Build from the repository root:
#   docker build -f docker/train.Dockerfile -t trainyard/train:dev .
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04@sha256:ac55d124da4882b497f732d8dfd9a702d5447a5f29d08d56da6f64f0a1eb34bc

# torch comes from the PyTorch index for this CUDA; the rest from PyPI, held to constraints.txt
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG UNSLOTH_VERSION=2026.10.9

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

# gcc stays: triton (bitsandbytes, unsloth kernels) compiles its launcher at run time
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && groupadd --gid 10001 trainyard \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/trainyard --shell /usr/sbin/nologin trainyard

RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY common/ common/
COPY gateway/ gateway/
COPY services/ services/
# torchvision is kept out as in `make install` (it breaks `import transformers` beside this torch)
RUN pip install -c constraints.txt ".[train]" "unsloth==${UNSLOTH_VERSION}" "unsloth-zoo==${UNSLOTH_VERSION}" \
    && (pip uninstall -y torchvision || true) \
    && python -c "import common.train, torch, transformers, peft, trl, bitsandbytes, accelerate"

USER 10001:10001
ENV HOME=/home/trainyard HF_HOME=/home/trainyard/.cache/huggingface
WORKDIR /home/trainyard
# the runner (or compose) gives the real command; this one only proves the program starts
CMD ["python", "-m", "common.train", "--help"]
