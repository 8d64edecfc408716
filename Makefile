# mscnn-edge: a thin Makefile over the Python API. Every target sets up what it needs.
# `make test` and (with the compile stage) `make build` are the two commands a fresh
# machine needs; see README.md.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help venv test lint format clean

help:
	@echo "make test    set up .venv and run the test suite"
	@echo "make lint    ruff lint and format check"
	@echo "make format  apply ruff formatting"
	@echo "make clean   remove build outputs and caches (keeps .venv)"
	@echo "make distclean  also remove .venv"

# The virtualenv is rebuilt whenever pyproject.toml (and so a pin) changes.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "error: mscnn-edge needs Python 3.11 (torch 2.13.0 CPU wheel and apache-tvm 0.27 pins); set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf build .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
