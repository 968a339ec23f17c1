"""The memory plan laid over a run's settings: what `model_checkpoint` decides before it launches.

The user's settings win: a field they gave (strategy, micro-batch, accumulation, checkpointing) is
fixed, and the plan chooses only the rest, or refuses, before anything is launched, when even its
best choice does not fit (training/memory_plan.py says how it estimates).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from exp1_assets.sizes import get_size
from exp1_assets.training.memory import Precision
from exp1_assets.training.memory_plan import Fixed, Machine, MemoryPlan, plan_training
from exp1_assets.training.spec import TrainSpec, build_train_spec

StrategyChoice = Literal["auto", "ddp", "fsdp_grad_op", "fsdp_full"]
STRATEGY_CHOICES: tuple[str, ...] = get_args(StrategyChoice)
# The settings the plan chooses when the user leaves them unset.
PLANNED_FIELDS = ("strategy", "per_device_batch", "grad_accum", "gradient_checkpointing")


@dataclass(frozen=True)
class PlanRequest:
    """How to plan one run: the strategy, and (to plan for another machine) its devices."""

    strategy: StrategyChoice = "auto"
    """auto: the cheapest strategy that fits (DDP, then FSDP2 ZeRO-2 like, then ZeRO-3 like); or force one."""
    devices: int | None = None
    """Plan for this many devices (None: the ranks the launcher starts)."""
    device_memory_gib: float | None = None
    """Plan for this much memory per device (None: read from the machine the launcher uses)."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGY_CHOICES:
            raise ValueError(f"strategy: {self.strategy!r} is not one of {STRATEGY_CHOICES}")
        if self.devices is not None and (isinstance(self.devices, bool) or self.devices < 1):
            raise ValueError(f"devices: must be an integer >= 1 or None, got {self.devices!r}")
        if self.device_memory_gib is not None and not self.device_memory_gib > 0:
            raise ValueError(f"device_memory_gib: must be positive or None, got {self.device_memory_gib!r}")

    def machine(self, detected: Machine | None) -> Machine | None:
        """The machine to plan for: the detected one with this request's overrides (None: unknown)."""
        devices = self.devices or (detected.devices if detected else None)
        memory = self.device_memory_gib or (detected.device_memory_gib if detected else None)
        if devices is None or memory is None:
            return None
        return Machine(devices=devices, device_memory_gib=memory, kind=detected.kind if detected else "gpu",
                       name=None if (self.devices or self.device_memory_gib) else (detected.name if detected else None))


def planned_overrides(
    *,
    size: str,
    architecture: str,
    seq_len: int,
    vocab_size: int,
    precision: str,
    machine: Machine,
    request: PlanRequest,
    given: Mapping[str, Any],
    effective_batch: int,
) -> tuple[dict[str, Any], MemoryPlan]:
    """The spec fields the plan sets (the `PLANNED_FIELDS` the user did not give) and the plan.

    `precision` is the spec's (auto: bf16 on GPUs, fp32 on CPU ranks). A ValueError says what the
    run needs and what the machine has when nothing fits.

    >>> from exp1_assets.training.memory_plan import MACHINES
    >>> fields, plan = planned_overrides(size="1B", architecture="llama", seq_len=2048, vocab_size=50257,
    ...     precision="auto", machine=MACHINES["8x24GiB"], request=PlanRequest(), given={}, effective_batch=32)
    >>> fields["strategy"], fields["per_device_batch"] * fields["grad_accum"], plan.total_gib < 24
    ('fsdp_grad_op', 32, True)
    >>> fields, _ = planned_overrides(size="1B", architecture="llama", seq_len=2048, vocab_size=50257,
    ...     precision="auto", machine=MACHINES["8x24GiB"], request=PlanRequest(strategy="ddp"),
    ...     given={"per_device_batch": 2}, effective_batch=32)
    >>> fields
    {'strategy': 'ddp', 'gradient_checkpointing': True}
    """
    micro_given = "per_device_batch" in given or "grad_accum" in given
    fixed = Fixed(
        strategy=None if request.strategy == "auto" else request.strategy,
        gradient_checkpointing=given.get("gradient_checkpointing"),
        micro_batch=given["per_device_batch"] if "per_device_batch" in given else None,
        effective_batch=effective_batch if micro_given else None,
    )
    if precision == "auto":
        precision = "bf16" if machine.kind == "gpu" else "fp32"
    plan_precision: Precision = precision  # type: ignore[assignment]
    plan = plan_training(get_size(size), machine=machine, vocab_size=vocab_size, seq_len=seq_len,
                         precision=plan_precision, architecture=architecture, fixed=fixed)
    chosen = {"strategy": plan.strategy, "gradient_checkpointing": plan.gradient_checkpointing}
    if not micro_given:
        chosen |= {"per_device_batch": plan.micro_batch, "grad_accum": plan.grad_accum}
    return {k: v for k, v in chosen.items() if k not in given}, plan


def build_planned_spec(
    *,
    size: str,
    overrides: Mapping[str, Any],
    request: PlanRequest,
    detected: Machine | None,
    packed_dir: Path,
    tokenizer_dir: Path,
    output_dir: Path,
    final_dir: Path,
    runs_dir: Path,
) -> tuple[TrainSpec, MemoryPlan | None]:
    """`build_train_spec` with the memory plan's choices for what the user left unset.

    `detected` is the machine the launcher would use; `request` may plan for another one. Without
    a machine to plan for (memory unknown) the spec is built as given, and the plan is None.
    Raises ValueError, before anything is launched, when the run cannot fit.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    if request.strategy != "auto":
        given["strategy"] = request.strategy
    where = dict(size=size, packed_dir=packed_dir, tokenizer_dir=tokenizer_dir, output_dir=output_dir,
                 final_dir=final_dir, runs_dir=runs_dir)
    draft = build_train_spec(overrides=given, **where)
    machine = request.machine(detected)
    if machine is None:
        return draft, None
    vocab_size = int(json.loads((packed_dir / "meta.json").read_text())["vocab_size"])
    planned, plan = planned_overrides(
        size=size, architecture=draft.architecture, seq_len=draft.max_length, vocab_size=vocab_size,
        precision=draft.precision, machine=machine, request=request,
        given={k: v for k, v in given.items() if k != "strategy"},
        effective_batch=draft.per_device_batch * draft.grad_accum)
    return build_train_spec(overrides={**given, **planned}, **where), plan
