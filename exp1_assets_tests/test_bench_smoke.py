"""The benchmarks under bench/ run end to end at their smallest (--quick) settings.

Not timed assertions: only that each script finishes, writes its JSON and that the JSON holds
the numbers the README promises (a ratio per benchmark, identical greedy outputs). `end_to_end.py
--quick` is the CLI test's whole-graph run (test_cli_and_schedules.py), not run twice.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path


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


def test_train_vs_plain_loop_quick(tmp_path: Path) -> None:
    result = _run("train_vs_plain_loop.py", tmp_path)
    assert set(result["sides"]) == {"project", "plain"}
    for side in result["sides"].values():
        assert {"tokens_per_s", "steady_tokens_per_s", "first_step_s", "tokens", "optimizer"} <= set(side)
    assert "job_tokens_per_s" in result["sides"]["project"]  # the job's own train_result.json number
    ratio = result["ratios"]["project/plain"]["tokens_per_s"]["median"]
    assert math.isfinite(ratio) and ratio > 0


def test_gpu_acceptance_cpu_quick(tmp_path: Path) -> None:
    """bench/gpu_acceptance.py --device cpu --quick: every section a CPU can run runs and passes its
    checks (packed == unpacked logits, batched == HF generate); the report's shape, not its speed."""
    env = {**os.environ, "BENCH_OUT_DIR": str(tmp_path / "bench_out"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_acceptance.py"), "--device", "cpu", "--quick",
                           "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    sections = result["sections"]
    assert result["passed"] and not result["failures"]
    assert {name: s["status"] for name, s in sections.items()} == {
        "environment": "passed", "train": "passed", "attention": "passed", "generation": "passed",
        "fsdp_vs_ddp": "skipped"}
    assert "needs >= 2" in sections["fsdp_vs_ddp"]["reason"] and all(s["seconds"] >= 0 for s in sections.values())
    job = sections["train"]["job"]
    assert job["tokens_per_s"] > 0 and job["mfu"] > 0 and job["timed_steps"] >= 1
    assert job["val_loss_after"] < job["val_loss_before"] and sections["train"]["plan"]["total_gib"] > 0
    implementations = sections["attention"]["implementations"]
    for name in ("sdpa", "eager"):
        logits = implementations[name]["logits"]
        # within tolerance, while documents that see each other (the KV-cache control) are far outside it
        assert logits["max_abs_diff"] <= logits["tolerance"] < logits["cache_control_max_abs_diff"]
    assert implementations["flash_attention_2"]["status"] == "skipped"
    generation = sections["generation"]
    assert generation["identical"] == generation["prompts"] == 4 and not generation["mismatches"]
    assert set(generation["sides"]) == {"batched", "hf_generate"}
    markdown = (tmp_path / "gpu_acceptance.md").read_text()
    assert markdown.startswith("# GPU acceptance: PASSED")
    assert all(f"| {name} | **" in markdown for name in sections)
    assert all(heading in markdown for heading in ("## train", "## attention", "## generation"))
