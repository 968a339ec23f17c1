#!/usr/bin/env bash
# GPU acceptance in one command, on a CUDA machine, in at most 10 minutes:
#
#   bench/gpu_acceptance.sh [--venv DIR] [--budget-s 540] [--out DIR] [more bench/gpu_acceptance.py flags]
#
# Checks that a GPU is there (nvidia-smi) and that the venv's torch sees it, then runs
# bench/gpu_acceptance.py within the time budget (default 540 s; sections that would not fit are
# skipped and say so) and writes bench/results/gpu_acceptance.json and .md (or under --out).
# It installs nothing: the venv (default .venv) comes from `make setup`, which installs the CUDA
# build of torch where nvidia-smi works; flash-attn is used if it is installed, skipped if not.
# `--device cpu` runs the CPU checks instead (no nvidia-smi needed; add --quick for the smoke size).
#
# Exit status: 0 every check that ran passed; 1 a check failed; 2 nothing to run on (no venv, no GPU,
# a CPU-only torch); 124 the run passed its budget plus 45 s and was stopped.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
budget=540
device=cuda
forward=()
while (($#)); do
  case "$1" in
    --venv) venv="$2"; shift 2 ;;
    --venv=*) venv="${1#*=}"; shift ;;
    --budget-s) budget="$2"; shift 2 ;;
    --budget-s=*) budget="${1#*=}"; shift ;;
    --device) device="$2"; shift 2 ;;
    --device=*) device="${1#*=}"; shift ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) forward+=("$1"); shift ;;
  esac
done

python="$venv/bin/python"
if [[ ! -x "$python" ]]; then
  echo "gpu_acceptance: no Python at $python: run 'make setup', or pass --venv DIR" >&2
  exit 2
fi
if [[ "$device" == cuda ]]; then
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_acceptance: no GPU here (nvidia-smi missing or failing); '--device cpu --quick' runs the CPU checks" >&2
    exit 2
  fi
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
  if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_acceptance: the torch in $venv does not see the GPU ($("$python" -c 'import torch; print(torch.__version__)')):" \
         "install a CUDA build of torch there" >&2
    exit 2
  fi
fi

cd "$repo"
# The budget is the Python side's own plan; the hard limit above it leaves time for its report.
# --foreground: Ctrl-C still reaches Python (which stops its jobs); it stops its jobs on SIGTERM too.
limit=$(( ${budget%.*} + 45 ))
status=0
timeout --foreground --kill-after=30 "$limit" "$python" bench/gpu_acceptance.py --device "$device" --budget-s "$budget" \
  ${forward[@]+"${forward[@]}"} || status=$?
if (( status == 124 )); then
  echo "gpu_acceptance: stopped after $limit s (budget $budget s + 45 s)" >&2
fi
exit "$status"
