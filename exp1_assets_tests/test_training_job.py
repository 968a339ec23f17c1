"""The training job: spec validation, and real (tiny, CPU) runs of the entry point in subprocesses.

Covers a full run (loss falls, the checkpoint loads and generates), resume after SIGKILL, and a
failing rank's error file. Two ranks in step (DDP and FSDP2): test_training_fsdp.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exp1_assets.training.spec import DebugSpec, TrainSpec

sys.path.insert(0, str(Path(__file__).parent))
from _training_data import build_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MAX_LENGTH = 64


def job_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PIPES")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", **extra)
    return env


@pytest.fixture(scope="module")
def data_paths(tmp_path_factory) -> dict[str, str]:
    return build_dataset(tmp_path_factory.mktemp("training_data"), max_length=MAX_LENGTH)


def make_spec(root: Path, data_paths: dict[str, str], **overrides) -> Path:
    settings = dict(max_steps=24, max_length=MAX_LENGTH, per_device_batch=8, save_steps=12,
                    eval_steps=12, logging_steps=4, **data_paths,
                    output_dir=str(root / "out"), run_dir=str(root / "run"))
    settings.update(overrides)
    spec = TrainSpec.from_size("tiny", **settings)
    path = root / "spec.json"
    spec.write(path)
    return path


def run_job(spec_path: Path, *, launcher: list[str] | None = None, timeout: float = 120, **env: str):
    command = [*(launcher or [sys.executable]), "-m", "exp1_assets.training.train", str(spec_path)]
    return subprocess.run(command, env=job_env(**env), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def pipes_env(root: Path) -> dict[str, str]:
    """Environment that makes the job believe Dagster launched it (messages go to a file)."""
    from dagster_pipes import encode_env_var

    context = {"asset_keys": ["model_checkpoint"], "code_version_by_asset_key": None,
               "provenance_by_asset_key": None, "partition_key": "tiny", "partition_key_range": None,
               "partition_time_window": None, "run_id": "test-run", "job_name": None,
               "retry_number": 0, "extras": {}}
    return {"DAGSTER_PIPES_CONTEXT": encode_env_var({"data": context}),
            "DAGSTER_PIPES_MESSAGES": encode_env_var({"path": str(root / "pipes_messages.jsonl")})}


# ---- spec ---------------------------------------------------------------------------------------

def base_spec(**overrides) -> TrainSpec:
    spec = TrainSpec.from_size("tiny", train_path="t.arrow", validation_path="v.arrow",
                               tokenizer_path="tok", output_dir="out", run_dir="run")
    return dataclasses.replace(spec, **overrides)  # re-validates


@pytest.mark.parametrize("field, value", [
    ("learning_rate", 0.0), ("per_device_batch", 0), ("grad_accum", -1), ("save_steps", 0),
    ("precision", "fp8"), ("architecture", "mamba"), ("size", "2B"), ("max_length", 4096),
    ("dropout", 1.0), ("train_path", ""), ("warmup_ratio", 1.5), ("report_to", "tensorboard"),
    ("attn_implementation", "flex_attention"),  # did not keep packed documents apart on CPU
])
def test_spec_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}:"):
        base_spec(**{field: value})


def test_spec_epochs_required_without_steps():
    with pytest.raises(ValueError, match="num_epochs"):
        base_spec(max_steps=None, num_epochs=0)
    assert base_spec(max_steps=None, num_epochs=2.0).num_epochs == 2.0


def test_spec_from_size_defaults_and_json_round_trip(tmp_path):
    spec = TrainSpec.from_size("1B", train_path="t", validation_path="v", tokenizer_path="k",
                               output_dir="o", run_dir="r", max_length=1024)
    assert (spec.per_device_batch, spec.grad_accum, spec.learning_rate) == (2, 16, 1.5e-4)
    assert spec.gradient_checkpointing and spec.max_length == 1024
    assert TrainSpec.from_json(spec.to_json()) == spec
    spec.write(tmp_path / "s.json")
    assert TrainSpec.read(tmp_path / "s.json") == spec
    with pytest.raises(ValueError, match="unknown TrainSpec field"):
        TrainSpec.from_size("tiny", wandb_api_key="secret")


def test_spec_hash_ignores_destination_and_logging_only():
    spec = base_spec(data_version="abc")
    same = dataclasses.replace(spec, output_dir="elsewhere", run_dir="r2", logging_steps=1,
                               train_path="/moved/t.arrow", report_to="wandb")
    assert spec.spec_hash() == same.spec_hash()
    for change in ({"learning_rate": 5e-4}, {"seed": 1}, {"data_version": "def"}, {"max_steps": 10}):
        assert dataclasses.replace(spec, **change).spec_hash() != spec.spec_hash(), change
    # Without a data version, the data paths identify the data.
    assert base_spec().spec_hash() != base_spec(train_path="other.arrow").spec_hash()


# ---- real runs ----------------------------------------------------------------------------------

def test_train_saves_a_loadable_checkpoint_and_loss_falls(tmp_path, data_paths):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    done = run_job(make_spec(tmp_path, data_paths), **pipes_env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "train_spec.json", "log_history.json", "train_result.json", "loss_curve.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))
    result = json.loads((out / "train_result.json").read_text())
    assert result["steps"] == 24 and result["resumed_from_step"] is None and result["world_size"] == 1
    assert result["val_loss_after"] < result["val_loss_before"] - 2.0, result
    history = json.loads((out / "log_history.json").read_text())
    losses = [e["loss"] for e in history if "loss" in e]
    assert losses[-1] < losses[0] - 2.0, losses
    assert 0 < result["tokens_seen"] < 24 * 8 * MAX_LENGTH  # non-pad tokens only

    # Rank 0 reported progress and the materialization through Dagster Pipes.
    messages = [json.loads(line) for line in (tmp_path / "pipes_messages.jsonl").read_text().splitlines()]
    logs = [m["params"]["message"] for m in messages if m["method"] == "log"]
    assert any(line.startswith("step 24/24 loss=") and "tokens/s=" in line for line in logs), logs
    (materialization,) = [m["params"] for m in messages if m["method"] == "report_asset_materialization"]
    metadata = materialization["metadata"]
    assert metadata["val_loss_after"]["raw_value"] == result["val_loss_after"]
    assert metadata["loss_curve"]["type"] == "md"
    assert metadata["loss_curve"]["raw_value"].startswith("![loss curve](data:image/png;base64,")
    assert len(materialization["data_version"]) == 16

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}],
                                           add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    generated = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]

    # Params changed vs. the seeded initialization the job started from.
    from exp1_assets.sizes import get_size
    from exp1_assets.training.model import build_model

    init = build_model(get_size("tiny"), architecture=result["architecture"], vocab_size=len(tokenizer),
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, seed=0)
    trained = dict(model.named_parameters())
    for name, param in init.named_parameters():
        assert not torch.equal(param, trained[name]), f"{name} did not change"


def test_resume_after_sigkill_continues_from_the_checkpoint(tmp_path, data_paths):
    spec_path = make_spec(tmp_path, data_paths, max_steps=40, save_steps=8, eval_steps=40)
    run_dir = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "exp1_assets.training.train", str(spec_path)],
                             env=job_env(), cwd=REPO, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while not (run_dir / "checkpoint-8" / "trainer_state.json").is_file():
        assert first.poll() is None, "job ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 90 s"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (tmp_path / "out" / "train_result.json").exists()
    saved = sorted(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*")
                   if (p / "trainer_state.json").is_file())
    assert saved and saved[-1] < 40

    done = run_job(spec_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "train_result.json").read_text())
    assert result["resumed_from_step"] == saved[-1] and result["steps"] == 40
    # No replay: each step logged once, and the epoch counter matches an uninterrupted run.
    steps = [e["step"] for e in json.loads((tmp_path / "out" / "log_history.json").read_text())
             if "loss" in e]
    assert steps == sorted(set(steps)) and steps[-1] == 40
    from datasets import Dataset

    steps_per_epoch = -(-len(Dataset.from_file(data_paths["train_path"])) // 8)
    assert result["epochs"] == pytest.approx(40 / steps_per_epoch)


def test_a_run_killed_after_its_last_checkpoint_resumes_without_training_an_extra_step(tmp_path, data_paths):
    """The Trainer alone would take one more optimizer step (13 of 12) when it resumes at the end."""
    from safetensors.torch import load_file

    first = run_job(make_spec(tmp_path, data_paths, max_steps=8, save_steps=4, eval_steps=8))
    assert first.returncode == 0, first.stderr[-3000:]
    # As if killed after checkpoint-8 was written and before the model was: the same spec again.
    again = run_job(make_spec(tmp_path, data_paths, max_steps=8, save_steps=4, eval_steps=8,
                              output_dir=str(tmp_path / "out-again")))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing left to train (resumed at step 8 of 8)" in again.stderr
    result = json.loads((tmp_path / "out-again" / "train_result.json").read_text())
    assert result["resumed_from_step"] == 8 and result["steps"] == 8
    assert not (tmp_path / "run" / "checkpoint-9").exists()
    before, after = (load_file(tmp_path / d / "model.safetensors") for d in ("out", "out-again"))
    assert all(before[k].equal(after[k]) for k in before)


ACCELERATE_TWO_RANKS = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "--main_process_port", "0"]


def test_failing_rank_writes_its_error_file(tmp_path, data_paths):
    spec_path = make_spec(tmp_path, data_paths, max_steps=8, debug=DebugSpec(fail_on_rank=1))
    done = run_job(spec_path, launcher=ACCELERATE_TWO_RANKS)
    assert done.returncode != 0
    error = (tmp_path / "run" / "errors" / "rank1.txt").read_text()
    assert error.startswith("rank 1/2: RuntimeError: injected fault on rank 1")
    assert not (tmp_path / "out" / "train_result.json").exists()
