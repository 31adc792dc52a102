# Every target works from a fresh clone: `setup` builds .venv, installing the pinned CPU torch
# wheel first (a bare `torch` would pull a multi-GB CUDA build).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo app test test-fast bench check clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/workbench run examples/demo.toml --out runs/demo

app: setup
	$(BIN)/workbench app

test: setup
	$(BIN)/python -m pytest -q -n 2 --timeout 900 tests

test-fast: setup
	$(BIN)/python -m pytest -q -n 2 -m "not slow and not browser" tests

bench: setup
	$(BIN)/python benchmarks/run_all.py

check: setup
	$(BIN)/ruff check workbench probes edits apps tests benchmarks
	$(BIN)/pyright

clean:
	rm -rf $(VENV) .pytest_cache runs tests/artifacts
