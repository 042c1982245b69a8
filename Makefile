# The two commands of a fresh clone (README, "Set up and test"):
#
#   make quickstart   creates $(VENV) if it is missing, installs
#                     requirements.txt and this package, trains the quickstart
#   make test         adds requirements-test.txt (PyTorch), then runs
#                     lint-imports and the whole suite
#   make help         this text (also plain `make`)
#
# Each install step reruns only when its requirements file changes. The
# recipes are the README's manual steps, run with $(VENV)/bin first on the
# PATH. Settings (make VAR=value, or the environment): VENV, the environment
# (.venv); PYTHON, the interpreter to create it with (default: the first
# CPython 3.12 that tools/find_python.sh finds); QUICKSTART_WORKDIR;
# PYTEST_FLAGS, added to the suite's command line.

SHELL := /bin/bash
VENV ?= .venv
QUICKSTART_WORKDIR ?= /tmp/quickstart
PYTEST_FLAGS ?=
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: help quickstart test
.DEFAULT_GOAL := help

help:
	@bash tools/help.sh Makefile

quickstart: $(VENV)/.installed
	python train.py --config=configs/quickstart.py --workdir=$(QUICKSTART_WORKDIR)

test: $(VENV)/.installed-test
	lint-imports && python -m pytest -n 2 --dist loadgroup $(PYTEST_FLAGS)

$(VENV)/bin/python:
	python=$$(bash tools/find_python.sh) && "$$python" -m venv $(VENV)

$(VENV)/.installed: requirements.txt pyproject.toml | $(VENV)/bin/python
	pip install -r requirements.txt && pip install -e .
	touch $@

$(VENV)/.installed-test: requirements-test.txt $(VENV)/.installed
	pip install -r requirements-test.txt
	touch $@
