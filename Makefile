# The README's two commands are `make run` and `make test`; both set everything up first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export EXP1_HOME ?= $(CURDIR)/.exp1_home
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
SIZE ?= tiny
PORT ?= 3000

.PHONY: setup home run dev test test-fast bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first: without CUDA, the CPU build 2.13.0 (an unpinned torch may pull a multi-GB CUDA build).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q "torch==2.13.0"; fi
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed home

home:
	@mkdir -p "$(DAGSTER_HOME)" "$(EXP1_HOME)"
	@cp scripts/dagster.yaml "$(DAGSTER_HOME)/dagster.yaml"

# The whole graph for one size (default tiny) on the built-in corpus, into the shared instance.
run: setup
	$(BIN)/dagster asset materialize -m exp1_assets.definitions --select '*' --partition $(SIZE) --config scripts/run_local.yaml
	@echo "size comparison report: $(EXP1_HOME)/size_comparison/comparison.md"
	@echo "evaluation report:      $(EXP1_HOME)/evaluation_report/$(SIZE)/report.md"
	@echo "samples:                $(EXP1_HOME)/sample_set/$(SIZE)/samples.html"

# The web UI (webserver + daemon) on loopback only: the UI can launch arbitrary runs.
dev: setup
	$(BIN)/dagster dev -h 127.0.0.1 -p $(PORT)

test: setup
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not slow and not slurm and not browser"

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf "$(EXP1_HOME)" "$(DAGSTER_HOME)"
