"""Sharded training for real: FSDP2 on 2 CPU ranks (gloo) under `accelerate launch`, against DDP.

One module fixture trains the same spec (data, seed, steps) three ways, DDP, FSDP2 ZeRO-2 like
and FSDP2 ZeRO-3 like, and the tests read what each left behind: the loss trajectories, the
sharded resume points, each rank's shards and the consolidated model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exp1_assets.training.spec import DebugSpec
from exp1_assets_tests.test_training_job import ACCELERATE_TWO_RANKS, make_spec, run_job
from exp1_assets_tests.test_training_job import data_paths  # noqa: F401  (module fixture)

pytestmark = pytest.mark.slow
STRATEGIES = ("ddp", "fsdp_grad_op", "fsdp_full")
STEPS, SAVE = 8, 4
# Same data, seed and order; FSDP reduce-scatters where DDP all-reduces, so the sums round
# differently in fp32. Measured over 16 steps here: at most 2e-7 relative (see the print).
LOSS_RTOL = 1e-4


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, data_paths: dict[str, str]) -> dict[str, Path]:  # noqa: F811
    roots = {}
    for strategy in STRATEGIES:
        root = tmp_path_factory.mktemp(strategy)
        spec = make_spec(root, data_paths, max_steps=STEPS, save_steps=SAVE, eval_steps=STEPS, logging_steps=1,
                         strategy=strategy, debug=DebugSpec(rank_params=True))
        done = run_job(spec, launcher=ACCELERATE_TWO_RANKS, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        roots[strategy] = root
    return roots


def _losses(root: Path) -> list[float]:
    history = json.loads((root / "out" / "log_history.json").read_text())
    return [e["loss"] for e in history if "loss" in e]


def _shards(root: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    debug = root / "run" / "debug"
    return load_file(debug / "rank0_params.safetensors"), load_file(debug / "rank1_params.safetensors")


def test_ddp_ranks_train_together_and_end_with_the_same_weights(runs: dict[str, Path]) -> None:
    rank0, rank1 = _shards(runs["ddp"])  # under DDP each rank holds the whole model
    assert rank0.keys() == rank1.keys() and rank0
    # Equal up to gloo's per-rank rounding of the all-reduce (not bitwise on CPU).
    diffs = sorted(((rank0[k] - rank1[k]).abs().max().item(), k) for k in rank0)[-5:]
    assert diffs[-1][0] < 1e-5, diffs
    result = json.loads((runs["ddp"] / "out" / "train_result.json").read_text())
    assert (result["world_size"], result["steps"], result["strategy"]) == (2, STEPS, "ddp")


@pytest.mark.parametrize("strategy", ["fsdp_grad_op", "fsdp_full"])
def test_fsdp_loss_trajectory_matches_ddp_on_the_same_data_and_seed(runs: dict[str, Path], strategy: str) -> None:
    ddp, fsdp = _losses(runs["ddp"]), _losses(runs[strategy])
    assert len(ddp) == len(fsdp) == STEPS
    worst = max(abs(a - b) / abs(a) for a, b in zip(ddp, fsdp))
    print(f"{strategy} vs ddp over {STEPS} steps: max relative loss difference {worst:.2e}; "
          f"losses {fsdp[0]:.4f} -> {fsdp[-1]:.4f}")
    assert worst < LOSS_RTOL, list(zip(ddp, fsdp))
    assert fsdp[-1] < fsdp[0] - 1.0  # and it learned
    result = json.loads((runs[strategy] / "out" / "train_result.json").read_text())
    assert (result["strategy"], result["world_size"], result["steps"]) == (strategy, 2, STEPS)


@pytest.mark.parametrize("strategy", ["fsdp_grad_op", "fsdp_full"])
def test_fsdp_resume_points_hold_one_shard_per_rank_and_no_whole_copy(runs: dict[str, Path], strategy: str) -> None:
    checkpoint = runs[strategy] / "run" / f"checkpoint-{SAVE}"
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert sorted(p.name for p in (checkpoint / part).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not list(checkpoint.glob("*.safetensors")) and not (checkpoint / "optimizer.pt").exists()
    # The manifest covers the shards, so a damaged shard is caught before a resume uses it.
    manifest = json.loads((checkpoint / "checkpoint_manifest.json").read_text())["files"]
    assert "pytorch_model_fsdp_0/__1_0.distcp" in manifest and "optimizer_0/__0_0.distcp" in manifest
    # DDP's checkpoint is whole, for contrast.
    assert (runs["ddp"] / "run" / f"checkpoint-{SAVE}" / "model.safetensors").is_file()


@pytest.mark.parametrize("strategy", ["fsdp_grad_op", "fsdp_full"])
def test_fsdp_final_model_is_one_safetensors_folder_equal_to_the_rank_shards(runs: dict[str, Path],
                                                                             strategy: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = runs[strategy] / "out"
    assert [p.name for p in out.glob("*.safetensors")] == ["model.safetensors"]
    model = AutoModelForCausalLM.from_pretrained(out)
    weights = model.state_dict()
    rank0, rank1 = _shards(runs[strategy])
    for name in rank0:
        # FSDP2 shards each parameter in dim-0 chunks: rank 0 holds the first half, rank 1 the rest.
        assert rank0[name].shape[0] < weights[name].shape[0], f"{name} was not sharded"
        assert torch.equal(torch.cat([rank0[name], rank1[name]]), weights[name]), name
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]
