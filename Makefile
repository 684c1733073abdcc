# Visual Word Embeddings: the course's commands. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= cpu
DATASET ?= auto

.PHONY: help setup test lint sync clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: $(VENV)/.installed  ## create .venv with pip (torch, the package, notebook and dev tools)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[notebooks,dev]'
	touch $@

test: setup  ## the whole test suite (unit tests, notebooks through papermill + nbval)
	$(PY) -m pytest tests

lint: setup  ## ruff
	$(PY) -m ruff check .

clean:  ## remove run outputs and caches (keeps data/ and .venv/)
	rm -rf runs/ .pytest_cache .ruff_cache test-output
