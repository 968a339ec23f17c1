"""The benchmarks under bench/ run end to end at their smallest (--quick) settings.

Not timed assertions: only that each script finishes, writes its JSON and that the JSON holds
the numbers the README promises (a ratio per benchmark, identical greedy outputs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(script: str, out: Path, *args: str, name: str = "") -> dict:
    env = {**os.environ, "BENCH_OUT_DIR": str(out), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / f"{name or script.removesuffix('.py')}_quick.json").read_text())


def test_train_throughput_quick(tmp_path: Path) -> None:
    result = _run("train_throughput.py", tmp_path)
    assert set(result["sides"]) == {"seed-style", "default"}
    assert result["sides"]["default"]["real_fraction"] > result["sides"]["seed-style"]["real_fraction"]
    assert result["ratios"]["real_tokens_per_s"] > 0 and result["peak_fp32_flops"] > 0


def test_generation_quick(tmp_path: Path) -> None:
    result = _run("generation.py", tmp_path, "--hf-generate-side", name="generation_eval")
    assert result["identical"] == 4 and not result["mismatches"]  # greedy: every side equals one at a time
    assert {s["side"] for s in result["sides"]} == {"one_at_a_time", "batched", "hf_generate_batches"}
    assert result["ratio_prompts_per_s"] > 0
    sampled = _run("generation.py", tmp_path, "--workload", "samples", name="generation_samples")
    assert sampled["identical"] is None and sampled["sampling"]["do_sample"] is True


def test_data_prep_quick(tmp_path: Path) -> None:
    result = _run("data_prep.py", tmp_path)
    (size,) = result["sizes"]
    assert size["stages"]["ingest"]["rows"] == 500 and size["stages"]["ingest"]["quarantined"] == 0
    assert size["stages"]["pack"]["tokens"] == size["stages"]["raw_encode"]["tokens"]


@pytest.mark.slow
def test_end_to_end_quick(tmp_path: Path) -> None:
    result = _run("end_to_end.py", tmp_path)
    assert result["returncode"] == 0
    assert {s["asset"] for s in result["steps"]} >= {"model_checkpoint", "evaluation_report", "sample_set"}
