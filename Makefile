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

.PHONY: setup home run ladder dev chat test test-fast bench upgrade clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first: without CUDA, the CPU build (an unpinned torch may pull a multi-GB CUDA build).
# Its version must equal constraints.txt's torch pin (a test checks).
TORCH_VERSION := 2.13.0
# The exact versions CI tested; pyproject.toml holds the ranges. A new pin re-runs the install.
CONSTRAINTS := constraints.txt
UPGRADE_VENV ?= /tmp/exp1_assets-upgrade

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	@if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q -c $(CONSTRAINTS) "torch==$(TORCH_VERSION)"; fi
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[dev]"
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
	@echo "benchmarks:             $(EXP1_HOME)/benchmark_report/$(SIZE)/benchmarks.md"
	@echo "report card:            $(EXP1_HOME)/report_card/$(SIZE)/card.md (and card.html)"
	@echo "all sizes' card:        $(EXP1_HOME)/size_comparison/card.md (and card.html)"
	@sed -n 's/^\*\*Verdict:\*\* /verdict: /p' "$(EXP1_HOME)/report_card/$(SIZE)/card.md"

# A scaling trend on a laptop: the CPU ladder (exp1_assets/sizes.py, role "ladder": not the research
# plan's sizes) plus tiny, smallest first, all on the same 614,400 tokens. The data assets once, then
# each size's partition (training, evaluation, samples, benchmarks and what follows them); the last
# size_comparison fits validation loss against parameters over all of them. ~23 min on 2 idle cores.
# LADDER_ARGS adds options to each size's run, e.g. "--config-json '{...}'".
LADDER_SIZES := ladder-1M ladder-2.5M tiny ladder-16M
ladder: setup
	$(BIN)/dagster asset materialize -m exp1_assets.definitions --select 'group:data' --config scripts/run_local.yaml
	@set -e; for size in $(LADDER_SIZES); do \
		echo "== $$size"; \
		$(BIN)/dagster asset materialize -m exp1_assets.definitions --select 'model_checkpoint*' --partition $$size --config scripts/run_local.yaml $(LADDER_ARGS); \
	done
	@echo "size comparison report: $(EXP1_HOME)/size_comparison/comparison.md"
	@grep -m1 -E '^(Fit|No power-law fit):' "$(EXP1_HOME)/size_comparison/comparison.md"

# The web UI (webserver + daemon) on loopback only: the UI can launch arbitrary runs.
dev: setup
	$(BIN)/dagster dev -h 127.0.0.1 -p $(PORT)

# Talk to the size's checkpoint in the terminal (exp1_assets/evaluation/chat.py). It builds nothing:
# without a checkpoint it says to `make run` first. CHAT_ARGS adds options, e.g. "--temperature 0.7".
chat:
	@test -x $(BIN)/python || { echo "no $(VENV): run \`make run\` first (it sets up and trains a checkpoint)" >&2; exit 1; }
	@$(BIN)/python -m exp1_assets.evaluation.chat --size $(SIZE) $(CHAT_ARGS)

# Two workers on two cores: half of the suite's time is spent waiting (process start-up, Slurm's
# timers, the browser), so two files at a time took 21.9 min against 27.0 in one process. Each file
# runs on one worker (--dist loadfile), in pytest's file order: putting the training files first
# was slower (23.8 min), as two of them then fight for the cores while the light files wait.
TEST_WORKERS ?= 2
test: setup
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

test-fast: setup
	$(BIN)/pytest -q -m "not slow and not slurm and not browser"

bench: setup
	$(BIN)/python bench/run_all.py

# Newest releases pyproject.toml admits, in a fresh venv without the pins; only if the whole suite
# passes there does its freeze replace constraints.txt (header kept, torch's +cpu tag dropped).
upgrade:
	rm -rf $(UPGRADE_VENV) && $(PY) -m venv $(UPGRADE_VENV) && $(UPGRADE_VENV)/bin/pip install -q --upgrade pip
	@if ! command -v nvidia-smi >/dev/null 2>&1; then $(UPGRADE_VENV)/bin/pip install -q "torch==$(TORCH_VERSION)"; fi
	$(UPGRADE_VENV)/bin/pip install -q -e ".[dev]" && $(UPGRADE_VENV)/bin/pip check
	$(UPGRADE_VENV)/bin/pytest -q
	{ grep '^#' $(CONSTRAINTS); $(UPGRADE_VENV)/bin/pip freeze --exclude-editable | sed -E 's/^(torch==[^+]*)\+.*/\1/'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

clean:
	rm -rf "$(EXP1_HOME)" "$(DAGSTER_HOME)"
