"""The graph materializes for real: in-process with `dagster.materialize`, and through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, materialize

from exp1_assets.defs.launcher import JobLauncher
from exp1_assets.defs.store import ArtifactStore
from exp1_assets_tests.run_configs import fast_run_config, only

DATA = ("raw_conversations", "conversation_splits", "tokenizer", "packed_dataset")
REPO = Path(__file__).resolve().parents[1]


def _assets(*names: str) -> list:
    """The asset definitions as declared (unbound), so tests can pass their own resources."""
    from exp1_assets_tests.run_configs import defs_modules

    modules = defs_modules()
    return [next(getattr(m, n) for m in modules if hasattr(m, n)) for n in names]


def _resources(home: Path) -> dict:
    return {"store": ArtifactStore(root=str(home)), "launcher": JobLauncher()}


def _metadata(instance, key: str, partition: str | None = None) -> dict:
    event = instance.get_latest_materialization_event(AssetKey(key))
    assert event is not None, f"{key} was not materialized"
    mat = event.asset_materialization
    assert mat.partition == partition
    return {k: v.value for k, v in mat.metadata.items()}


def _check_results(result) -> dict[str, bool]:
    return {e.check_name: e.passed
            for e in result.get_asset_check_evaluations()}


def test_data_assets_materialize_in_process(exp1_home: Path, dagster_instance) -> None:
    config = fast_run_config()
    result = materialize(_assets(*DATA), instance=dagster_instance, resources=_resources(exp1_home),
                         run_config=only(config, *DATA))
    assert result.success
    assert _check_results(result) == {"quarantine_rate_ok": True, "no_split_overlap": True,
                                      "tokenizer_roundtrip": True, "blocks_well_formed": True}

    raw = _metadata(dagster_instance, "raw_conversations")
    summary = json.loads((exp1_home / "raw_conversations" / "summary.json").read_text())
    assert raw["rows"] == summary["rows"] > 1000
    assert raw["rows"] + raw["quarantined"] == 1500  # every input row kept or quarantined
    assert sum(raw["quarantine_reasons"].values()) == raw["quarantined"]

    splits = _metadata(dagster_instance, "conversation_splits")
    assert splits["train_rows"] + splits["validation_rows"] + splits["test_rows"] + splits["duplicates_removed"] == raw["rows"]
    assert splits["validation_rows"] > 0 and splits["test_rows"] > 0

    packed = _metadata(dagster_instance, "packed_dataset")
    meta = json.loads((exp1_home / "packed_dataset" / "meta.json").read_text())
    assert packed["max_length"] == meta["max_length"] == 128
    assert packed["train_blocks"] == meta["splits"]["train"]["blocks"] > 0
    assert 0 < packed["loss_fraction"] < 1 and packed["padding_fraction"] < 0.05
    assert "data:image/png;base64," in packed["length_histogram"]
    # Atomic writes leave nothing half-done beside the final artifacts.
    assert not [p for p in exp1_home.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def _cli_env(home: Path, dagster_home: Path) -> dict[str, str]:
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text((REPO / "scripts" / "dagster.yaml").read_text())
    return {**os.environ, "EXP1_HOME": str(home), "DAGSTER_HOME": str(dagster_home)}


def test_data_assets_materialize_through_the_cli(exp1_home: Path, tmp_path: Path, monkeypatch) -> None:
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps(only(fast_run_config(), *DATA)))
    env = _cli_env(exp1_home, tmp_path / "dagster_home")
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.run(
        [str(dagster), "asset", "materialize", "-m", "exp1_assets.definitions", "--select", ",".join(DATA),
         "--config", str(config_file)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (exp1_home / "packed_dataset" / "train.arrow").exists()
    from dagster import DagsterInstance

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    with DagsterInstance.get() as instance:  # the same instance the CLI run wrote to
        assert _metadata(instance, "packed_dataset")["train_blocks"] > 0


@pytest.mark.slow
def test_whole_graph_reaches_the_research_plans_thresholds(exp1_home: Path, dagster_instance, artifacts_dir: Path) -> None:
    """The experiment in miniature: built-in corpus -> tiny model -> report -> samples -> comparison.

    A few minutes of CPU training must reach perplexity < 20 and ROUGE-L > 0.3 on held-out prompts.
    """
    config = {"ops": {"model_checkpoint": {"config": {"max_steps": 150, "save_steps": 50, "eval_steps": 50}},
                      "evaluation_report": {"config": {"num_samples": 300}},
                      "sample_set": {"config": {"variations": 1, "max_new_tokens": 48}},
                      "benchmark_report": {"config": {"builtin_docs": 60}}}}
    result = materialize(_assets(*DATA, "model_checkpoint", "evaluation_report", "sample_set", "benchmark_report",
                                 "report_card", "size_comparison"),
                         instance=dagster_instance, resources=_resources(exp1_home), run_config=config,
                         partition_key="tiny")
    assert result.success
    checks = _check_results(result)
    assert checks["perplexity_below_threshold"] and checks["rouge_l_above_threshold"], checks
    assert checks["loss_finite"] and checks["validation_loss_decreased"]

    report = _metadata(dagster_instance, "evaluation_report", "tiny")
    for key in ("perplexity", "perplexity_all_tokens", "bits_per_byte", "rouge1", "rouge2", "rouge_l", "bleu",
                "chrf", "distinct_1", "distinct_2", "distinct_3", "distinct_4", "self_bleu"):
        assert isinstance(report[key], float), key
    assert report["perplexity"] < 20 and report["rouge_l"] > 0.3

    checkpoint = exp1_home / "model_checkpoint" / "tiny"
    trained = json.loads((checkpoint / "train_result.json").read_text())
    assert trained["steps"] == 150 and trained["val_loss_after"] < trained["val_loss_before"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tok = AutoTokenizer.from_pretrained(checkpoint)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 12 + 30?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=40, do_sample=False)
    new = out[0, prompt["input_ids"].shape[1]:].tolist()
    assert tok.convert_tokens_to_ids("<|im_end|>") in new  # learned to stop

    # The benchmarks ran through lm-evaluation-harness on the built-in offline tasks, and the card
    # states the verdict in words from the same numbers.
    benchmarks = json.loads((exp1_home / "benchmark_report" / "tiny" / "benchmarks.json").read_text())
    assert set(benchmarks["tasks"]) == {"exp1_answer_choice", "exp1_arithmetic_exact"}
    choice = benchmarks["tasks"]["exp1_answer_choice"]
    assert 0 < choice["chance"] < 1 and choice["samples"] == 60 and 0 <= choice["value"] <= 1
    assert "benchmarks_above_chance" in checks
    card = _metadata(dagster_instance, "report_card", "tiny")
    assert card["verdict"].startswith("meets the plan's perplexity and ROUGE-L bars"), card["verdict"]
    assert "exact answers" in card["verdict"] and "benchmark" in card["verdict"]
    assert (exp1_home / "report_card" / "tiny" / "card.html").is_file()

    comparison = _metadata(dagster_instance, "size_comparison")
    assert comparison["sizes"] == 1 and "tiny" in comparison["table"]
    summary = json.loads((exp1_home / "size_comparison" / "comparison.json").read_text())
    assert summary["sizes"] == ["tiny"] and "125M" in summary["missing_sizes"]
    (artifacts_dir / "tiny_report.json").write_text(json.dumps({k: report[k] for k in ("perplexity", "rouge_l", "bleu")}))
