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
	-$(PY) -m pip uninstall -q -y torchvision
	touch $(STAMP)

model: install ## build the tiny local model (cached) under var/models/tiny-llama
	$(PY) -m common.train.tiny_model --out var/models/tiny-llama

demo: install ## run the demo fine-tune end to end on the embedded default
	$(PY) examples/demo.py

test: install ## run the test suite (SQLite and PostgreSQL, moto S3, real tiny training)
	$(PY) -m pytest -q -ra

lint: install ## ruff
	$(VENV)/bin/ruff check .

clean: ## remove local state (database, objects, logs); keeps .venv and the model
	rm -rf var/objects var/logs var/trainyard.db*

.PHONY: help install model demo test lint clean
