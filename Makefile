# The two commands: `make quickstart` and `make test`; CI (.ci/run) runs `make lint` and
# `make typecheck` before the tests. Everything installs into .venv with pinned versions.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: quickstart test lint typecheck install install-dev clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e .
	touch $@

# One pip run for the dev install (a second would resolve and build the package again); the tests
# run lm-evaluation-harness too (the harness extra).
$(VENV)/.installed-dev: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e '.[dev,harness]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

quickstart: install
	$(BIN)/seed run recipes/quickstart.toml

# Two workers, a test file each at a time (module-scoped servers start once): 1.65x on 2 cores.
# `make test PYTEST_ARGS="-m 'not slow'"` skips the end-to-end tests of 15 s or more.
test: install-dev
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check src tests benchmarks

# Files, plugin and strictness: [tool.mypy] in pyproject.toml.
typecheck: install-dev
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs
