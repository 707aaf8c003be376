# Set-up is two commands on a fresh machine with python3: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint typecheck unit bench test-image clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[demo]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/ztr demo

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check sidecar tests bench
	$(BIN)/lint-imports

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest

# The inner loop: unit tests and in-process checks, no real processes (under 30 s here).
test-fast: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -m "not process" -q

bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench

# Builds the real image with buildah and runs it with podman (needs root; see .ci/run).
test-image: $(VENV)/.dev-installed
	bash tests/image/run.sh

clean:
	rm -rf $(VENV) .image-build build *.egg-info
