"""The memory plan: which strategy each size gets on the research plan's machines, refusals that say
what is needed, and a static estimate that equals what a real model and AdamW allocate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from exp1_assets.sizes import SIZES, get_size
from exp1_assets.training.memory import param_count
from exp1_assets.training.memory_plan import MACHINES, Machine, plan_table, plan_training, static_bytes

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize(("size", "machine", "strategy", "checkpointing", "micro"), [
    ("125M", "8x80GiB", "ddp", False, 16),  # everything fits: the registry's own settings
    ("125M", "1x24GiB", "ddp", True, 16),  # 2048-token blocks x 16 rows: activations need recompute
    ("1B", "1x24GiB", "ddp", True, 2),  # fits only narrowly, with checkpointing
    ("1B", "8x24GiB", "fsdp_grad_op", False, 2),  # sharding the 16 B/param state beats recomputing
    ("1.5B", "8x24GiB", "fsdp_grad_op", False, 1),
    ("1.5B", "8x80GiB", "ddp", False, 1),
])
def test_the_planner_picks_the_cheapest_strategy_that_fits(size: str, machine: str, strategy: str,
                                                           checkpointing: bool, micro: int) -> None:
    plan = plan_training(get_size(size), machine=MACHINES[machine])
    assert (plan.strategy, plan.gradient_checkpointing, plan.micro_batch) == (strategy, checkpointing, micro)
    assert plan.micro_batch * plan.grad_accum == get_size(size).effective_batch  # the effective batch is kept
    assert plan.total_gib <= MACHINES[machine].device_memory_gib


def test_a_size_that_cannot_fit_is_refused_saying_what_it_needs_and_what_would_do() -> None:
    with pytest.raises(ValueError) as refusal:
        plan_training(get_size("1.5B"), machine=MACHINES["1x24GiB"])
    message = str(refusal.value)
    assert message.startswith("1.5B on 1 x 24 GiB (RTX 4090): needs ~")
    assert "24 GiB there" in message and "use >= 2 such devices" in message
    needed = float(message.split("needs ~")[1].split(" GiB")[0])
    assert needed > 24  # 1.39 B params x 16 bytes alone is 20.7 GiB
    # The logits of one 256-token row alone outgrow 0.1 GiB: no number of devices helps.
    with pytest.raises(ValueError, match=r"tiny on 1 x 1.6 GiB: needs ~1.9 GiB .*; use devices with more memory$"):
        plan_training(get_size("tiny"), machine=Machine(devices=1, device_memory_gib=1.6), vocab_size=50257)
    with pytest.raises(ValueError, match=r"device_memory_gib: must exceed"):
        Machine(devices=1, device_memory_gib=1.0)


def test_sharding_divides_the_optimizer_state_by_the_devices() -> None:
    params, layer, embed = 1_000_000, 100_000, 200_000
    ddp = static_bytes(params, strategy="ddp", devices=8, layer_params=layer, embedding_params=embed, precision="bf16")
    zero2 = static_bytes(params, strategy="fsdp_grad_op", devices=8, layer_params=layer, embedding_params=embed,
                         precision="bf16")
    zero3 = static_bytes(params, strategy="fsdp_full", devices=8, layer_params=layer, embedding_params=embed,
                         precision="bf16")
    for part in ("master_weights", "grads", "optimizer"):
        assert zero2[part] == zero3[part] == ddp[part] // 8
    assert zero2["compute_weights"] == ddp["compute_weights"] == 2 * params
    assert zero3["compute_weights"] == 2 * (2 * layer + embed)  # one layer gathered, the next prefetched


@pytest.mark.parametrize(("size", "vocab"), [("tiny", 4096), ("125M", 50257)])
def test_the_static_estimate_equals_what_a_real_model_and_adamw_allocate(size: str, vocab: int) -> None:
    """fp32 weights, their gradients and AdamW's two moments after one real step, byte for byte."""
    import torch

    from exp1_assets.training.model import build_model

    model = build_model(get_size(size), architecture="llama", vocab_size=vocab, pad_token_id=0, bos_token_id=None,
                        eos_token_id=1, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, vocab, (1, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    params = list(model.parameters())  # tied weights once, as the optimizer sees them
    measured = {
        "master_weights": sum(p.numel() * p.element_size() for p in params),
        "grads": sum(p.grad.numel() * p.grad.element_size() for p in params),
        "optimizer": sum(t.numel() * t.element_size() for p in params
                         for key, t in optimizer.state[p].items() if key in ("exp_avg", "exp_avg_sq")),
    }
    count = param_count(get_size(size), vocab_size=vocab, architecture="llama")
    planned = static_bytes(count, strategy="ddp", devices=1, layer_params=0, embedding_params=0, precision="fp32")
    assert {k: planned[k] for k in measured} == measured
    print(size, {k: f"{v / 2**20:.1f} MiB" for k, v in measured.items()})


def test_plan_only_mode_answers_without_training() -> None:
    command = [sys.executable, "-m", "exp1_assets.training.memory_plan"]
    fits = subprocess.run([*command, "--size", "1.5B", "--machine", "8x24GiB"], capture_output=True, text=True,
                          timeout=120)
    assert fits.returncode == 0, fits.stderr
    plan = json.loads(fits.stdout)
    assert plan["strategy"] == "fsdp_grad_op" and plan["micro_batch"] * plan["grad_accum"] == 32
    assert set(plan["parts_gib"]) == {"master_weights", "grads", "optimizer", "compute_weights", "activations",
                                      "reserve"}
    refused = subprocess.run([*command, "--size", "1.5B", "--devices", "1", "--device-memory-gib", "24"],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "1.5B on 1 x 24 GiB: needs ~" in refused.stderr


def test_the_readme_table_is_the_planners() -> None:
    table = plan_table()
    assert table in README.read_text(), "README's memory-plan table is stale: paste `python -m " \
                                        "exp1_assets.training.memory_plan --table`"
    planned = [s for s in SIZES.values() if s.role != "ladder"]  # the ladder is CPU-only: not in the table
    assert len(table.splitlines()) == 2 + len(planned) * len(MACHINES)


# ---- the plan laid over a run's settings (what model_checkpoint does before launching) ----------

def test_a_forced_strategy_that_cannot_fit_is_refused_naming_what_was_fixed() -> None:
    from exp1_assets.training.memory_plan import Fixed

    with pytest.raises(ValueError) as refusal:
        plan_training(get_size("1.5B"), machine=MACHINES["8x24GiB"], fixed=Fixed(strategy="ddp"))
    message = str(refusal.value)
    assert "even with ddp" in message and "leave the plan free to choose (fixed here: strategy=ddp)" in message
    # Free to choose, the same machine fits it sharded.
    assert plan_training(get_size("1.5B"), machine=MACHINES["8x24GiB"]).strategy == "fsdp_grad_op"


def test_the_plan_sets_only_what_the_user_left_unset() -> None:
    from exp1_assets.training.planned_spec import PlanRequest, planned_overrides

    shape = dict(size="1B", architecture="llama", seq_len=2048, vocab_size=50257, precision="auto",
                 machine=MACHINES["8x24GiB"], effective_batch=32)
    chosen, plan = planned_overrides(**shape, request=PlanRequest(), given={})
    assert chosen == {"strategy": "fsdp_grad_op", "gradient_checkpointing": False, "per_device_batch": 2,
                      "grad_accum": 16}
    # The user's micro-batch and checkpointing stay; the plan picks the strategy that fits with them.
    chosen, plan = planned_overrides(**shape, request=PlanRequest(), given={"per_device_batch": 1,
                                                                           "gradient_checkpointing": True})
    assert chosen == {"strategy": "ddp"} and (plan.micro_batch, plan.gradient_checkpointing) == (1, True)
    # Precision auto means fp32 on CPU ranks: twice the activation bytes of bf16.
    cpu = Machine(devices=8, device_memory_gib=24.0, kind="cpu")
    _, on_cpu = planned_overrides(**{**shape, "machine": cpu}, request=PlanRequest(), given={})
    assert on_cpu.parts_gib["activations"] > plan.parts_gib["activations"]


def test_a_plan_request_can_plan_for_another_machine() -> None:
    from exp1_assets.training.planned_spec import PlanRequest

    here = Machine(devices=2, device_memory_gib=11.0, kind="cpu")
    assert PlanRequest().machine(here) == here
    assert PlanRequest(devices=8, device_memory_gib=24.0).machine(here) == Machine(devices=8, device_memory_gib=24.0,
                                                                                   kind="cpu")
    assert PlanRequest().machine(None) is None  # memory unknown: no plan
    assert PlanRequest(devices=8, device_memory_gib=80.0).machine(None).devices == 8
    with pytest.raises(ValueError, match="strategy"):
        PlanRequest(strategy="zero3")
    with pytest.raises(ValueError, match="devices"):
        PlanRequest(devices=0)
