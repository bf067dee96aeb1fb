# syntax=docker/dockerfile:1.7
# The API image: the gateway and every trainer service (huggingface, unsloth, dpo), with API
# dependencies only (no torch). They are one package and differ only in the backend the service
# app is built with, so one image serves them all and the container command picks the component:
#   trainyard serve gateway|gateway-internal|huggingface|unsloth|dpo --host 0.0.0.0 --port N
# (common/cli.py; the default CMD serves the public gateway on 8080). In a cluster the services
# start training as Kubernetes Jobs of the training image (docker/train.Dockerfile) and never
# train in this container. HEALTHCHECK probes $TRAINYARD_PORT: set it to the port the command
# serves on (k8s/ and docker-compose.yml do). Build from the repository root:
#   docker build -f docker/api.Dockerfile -t trainyard/api:dev .
FROM python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1 AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# the exact versions of locks/api-image.txt (hashes checked), then the project itself without resolving
COPY locks/api-image.txt locks/
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-deps --require-hashes -r locks/api-image.txt
COPY pyproject.toml README.md ./
COPY common/ common/
COPY gateway/ gateway/
COPY services/ services/
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation .

FROM python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 TRAINYARD_PORT=8080
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin trainyard
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /tmp
# gateway, huggingface, unsloth, dpo, gateway-internal (common/cli.py DEFAULT_PORTS)
EXPOSE 8080 8081 8082 8083 8090
HEALTHCHECK --interval=10s --timeout=3s CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('TRAINYARD_PORT', '8080'), timeout=2)"]
CMD ["trainyard", "serve", "gateway", "--host", "0.0.0.0", "--port", "8080"]
