"""How to train a size on a machine: DDP or FSDP2 sharding, checkpointing, micro-batch x accumulation.

Per device, AdamW mixed-precision training holds fp32 master weights, fp32 gradients and two fp32
moments (16 bytes per parameter), the 16-bit compute copies of the weights, the activations, and
a reserve for the CUDA context and allocator slack. The strategies split that differently over
`N` devices (P parameters):

    strategy       master + grads + moments   16-bit compute weights
    ddp            16 P                        2 P (autocast's cached copies)
    fsdp_grad_op   16 P / N                    2 P (kept unsharded from forward to backward: ZeRO-2)
    fsdp_full      16 P / N                    2 x one layer + embeddings (gathered per layer: ZeRO-3)

The plan keeps the size's effective batch (`per_device_batch x grad_accum`, the registry's
sequences per optimizer step on one device) and tries, cheapest first: the registry's micro-batch
with DDP, then FSDP2 gradient/optimizer sharding, then full sharding, each without and then with
gradient checkpointing; only if none fits does it halve the micro-batch (doubling accumulation).
Where nothing fits it refuses, saying what was needed and how many devices would do.

`python -m exp1_assets.training.memory_plan --size 1.5B --machine 1x24GiB` answers without
training; `--table` prints the README's table. Order-of-magnitude guidance: the static part is
exact (a test compares it with what a real model and AdamW allocate), activations are estimated.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, get_args

from exp1_assets.sizes import DEFAULT_ARCHITECTURE, GPT2_VOCAB_SIZE, SIZES, ModelSize, get_size
from exp1_assets.training.memory import PRECISION_BYTES, Precision, activation_bytes, param_count

Strategy = Literal["ddp", "fsdp_grad_op", "fsdp_full"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
DeviceKind = Literal["gpu", "cpu"]
GIB = 2**30
RESERVE_GIB = 1.5  # CUDA context (~0.5-1 GiB) + allocator fragmentation, per device
OPENHERMES_TOKENS = 0.4e9  # the real OpenHermes-2.5, tokenized, one epoch
PLANNED_MFU = 0.4


@dataclass(frozen=True)
class Machine:
    """What the plan is for: devices, memory per device, and (for time estimates) their peak."""

    devices: int
    """Devices (GPUs) that train together."""
    device_memory_gib: float
    """Memory per device, GiB."""
    peak_tflops: float | None = None
    """Dense bf16 peak per device, TFLOP/s (None: no time estimate)."""
    name: str | None = None
    """How tables name it."""
    kind: DeviceKind = "gpu"
    """gpu (bf16 autocast when precision is auto) or cpu (ranks share the host's RAM; fp32)."""

    def __post_init__(self) -> None:
        if self.kind not in ("gpu", "cpu"):
            raise ValueError(f"kind: {self.kind!r} is not one of ('gpu', 'cpu')")
        if self.devices < 1:
            raise ValueError(f"devices: must be >= 1, got {self.devices}")
        if not self.device_memory_gib > RESERVE_GIB:
            raise ValueError(f"device_memory_gib: must exceed the {RESERVE_GIB} GiB reserve, got {self.device_memory_gib}")

    @property
    def label(self) -> str:
        return self.name or f"{self.devices} x {self.device_memory_gib:g} GiB"


# The research plan's hardware, and a larger node to compare with (peaks: NVIDIA's dense bf16 specs).
MACHINES = {
    "1x24GiB": Machine(devices=1, device_memory_gib=24.0, peak_tflops=165.2, name="1 x 24 GiB (RTX 4090)"),
    "8x24GiB": Machine(devices=8, device_memory_gib=24.0, peak_tflops=165.2, name="8 x 24 GiB (RTX 4090)"),
    "8x80GiB": Machine(devices=8, device_memory_gib=80.0, peak_tflops=312.0, name="8 x 80 GiB (A100)"),
}


@dataclass(frozen=True)
class MemoryPlan:
    """How one size trains on one machine, and what each device holds."""

    size: str
    machine: Machine
    strategy: Strategy
    gradient_checkpointing: bool
    micro_batch: int
    grad_accum: int
    parts_gib: dict[str, float]
    """Per device: master_weights, grads, optimizer, compute_weights, activations, reserve."""

    @property
    def total_gib(self) -> float:
        return round(sum(self.parts_gib.values()), 2)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "total_gib": self.total_gib}


def static_bytes(params: int, *, strategy: Strategy, devices: int, layer_params: int, embedding_params: int,
                 precision: Precision) -> dict[str, int]:
    """Per-device bytes of weights, gradients, AdamW moments and compute weights.

    >>> static_bytes(1000, strategy="ddp", devices=8, layer_params=0, embedding_params=0, precision="fp32")
    {'master_weights': 4000, 'grads': 4000, 'optimizer': 8000, 'compute_weights': 0}
    >>> static_bytes(1000, strategy="fsdp_grad_op", devices=8, layer_params=0, embedding_params=0, precision="bf16")
    {'master_weights': 500, 'grads': 500, 'optimizer': 1000, 'compute_weights': 2000}
    """
    shards = 1 if strategy == "ddp" else devices
    width = PRECISION_BYTES[precision]
    if strategy == "fsdp_full":  # gathered one layer at a time, the next one prefetched
        compute = (2 * layer_params + embedding_params) * width
    elif precision == "fp32":  # no separate 16-bit copy; ZeRO-2 keeps the gathered fp32 weights
        compute = 0 if strategy == "ddp" else params * 4
    else:
        compute = params * width
    return {"master_weights": 4 * params // shards, "grads": 4 * params // shards,
            "optimizer": 8 * params // shards, "compute_weights": compute}


@dataclass(frozen=True)
class Fixed:
    """What the user set, so the plan may not choose it (None: the plan chooses)."""

    strategy: Strategy | None = None
    """Train with this strategy (the plan checks that it fits)."""
    gradient_checkpointing: bool | None = None
    """Recompute activations (True) or not (False)."""
    micro_batch: int | None = None
    """Keep this micro-batch (and the accumulation that goes with it)."""
    effective_batch: int | None = None
    """Sequences per optimizer step per device (None: the size's)."""


def _candidates(size: ModelSize, machine: Machine, fixed: Fixed) -> Iterator[tuple[Strategy, bool, int]]:
    """(strategy, checkpointing, micro-batch), cheapest first (see the module docstring)."""
    strategies: tuple[Strategy, ...] = ("ddp",) if machine.devices == 1 else ("ddp", "fsdp_grad_op", "fsdp_full")
    if fixed.strategy is not None:
        strategies = (fixed.strategy,)
    checkpointing_options = (False, True) if fixed.gradient_checkpointing is None else (fixed.gradient_checkpointing,)
    effective = fixed.effective_batch or size.effective_batch
    micros = [fixed.micro_batch] if fixed.micro_batch is not None else _halvings(size.per_device_batch)
    for micro in micros:
        if effective % micro == 0:
            for checkpointing in checkpointing_options:
                for strategy in strategies:
                    yield strategy, checkpointing, micro


def _halvings(start: int) -> list[int]:
    """The registry's micro-batch, then halved down to 1 (accumulation doubles each time).

    >>> _halvings(8)
    [8, 4, 2, 1]
    """
    return [start >> i for i in range(start.bit_length()) if start >> i >= 1]


def plan_training(size: ModelSize, *, machine: Machine, vocab_size: int = GPT2_VOCAB_SIZE, seq_len: int | None = None,
                  precision: Precision = "bf16", architecture: str = DEFAULT_ARCHITECTURE,
                  fixed: Fixed = Fixed()) -> MemoryPlan:
    """The cheapest way to train `size` on `machine` that fits, or a ValueError saying why none does.

    `fixed` holds what the user chose; the plan then only picks the rest (or says it cannot fit).
    """
    shape = _Shape(size=size, seq_len=size.max_length if seq_len is None else seq_len, precision=precision,
                   vocab_size=vocab_size, params=param_count(size, vocab_size=vocab_size, architecture=architecture),
                   fixed=fixed)
    plan, smallest_gib = _cheapest_fit(shape, machine)
    if plan is not None:
        return plan
    # Would more of the same devices do? (The smallest device count whose cheapest fit exists.)
    more = next((n for n in (2, 4, 8, 16, 32, 64) if n > machine.devices
                 and _cheapest_fit(shape, dataclasses.replace(machine, devices=n, name=None))[0] is not None), None)
    hint = (f"use >= {more} such devices (sharded), or devices with more memory" if more
            else "use devices with more memory")
    if fixed != Fixed():
        hint += f"; or leave the plan free to choose (fixed here: {_describe(fixed)})"
    how = (f"with {fixed.strategy}" if fixed.strategy else "fully sharded" if machine.devices > 1 else "with DDP")
    micro = f"micro-batch {fixed.micro_batch}" if fixed.micro_batch else "micro-batch 1"
    checkpointing = "no gradient checkpointing" if fixed.gradient_checkpointing is False else "gradient checkpointing"
    raise ValueError(f"{size.name} on {machine.label}: needs ~{smallest_gib + RESERVE_GIB:.1f} GiB per device even "
                     f"{how}, {micro} and {checkpointing} ({machine.device_memory_gib:g} GiB there); {hint}")


def _describe(fixed: Fixed) -> str:
    return ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(fixed).items() if v is not None)


@dataclass(frozen=True)
class _Shape:
    """What a plan depends on besides the machine (the parameter count is computed once)."""

    size: ModelSize
    seq_len: int
    precision: Precision
    vocab_size: int
    params: int
    fixed: Fixed


def _cheapest_fit(shape: _Shape, machine: Machine) -> tuple[MemoryPlan | None, float]:
    """The first candidate that fits (or None), and the smallest total any candidate needs, in GiB."""
    size, params = shape.size, shape.params
    embedding = shape.vocab_size * size.hidden
    layer = (params - embedding) // size.layers
    usable = machine.device_memory_gib - RESERVE_GIB
    smallest = float("inf")
    for strategy, checkpointing, micro in _candidates(size, machine, shape.fixed):
        parts = static_bytes(params, strategy=strategy, devices=machine.devices, layer_params=layer,
                             embedding_params=embedding, precision=shape.precision)
        parts["activations"] = activation_bytes(size, batch=micro, seq_len=shape.seq_len, vocab_size=shape.vocab_size,
                                                precision=shape.precision, checkpointing=checkpointing)
        gib = {k: round(v / GIB, 2) for k, v in parts.items()}
        smallest = min(smallest, sum(gib.values()))
        if sum(parts.values()) / GIB <= usable:
            plan = MemoryPlan(size=size.name, machine=machine, strategy=strategy, gradient_checkpointing=checkpointing,
                              micro_batch=micro,
                              grad_accum=(shape.fixed.effective_batch or size.effective_batch) // micro,
                              parts_gib={**gib, "reserve": RESERVE_GIB})
            return plan, smallest
    return None, smallest


def epoch_hours(plan: MemoryPlan, *, size: ModelSize, params: int, seq_len: int, tokens: float = OPENHERMES_TOKENS,
                mfu: float = PLANNED_MFU) -> float | None:
    """Hours for one epoch of `tokens` at `mfu` of the machine's peak (None without a peak)."""
    if plan.machine.peak_tflops is None:
        return None
    per_token = flops_per_token(size, params=params, seq_len=seq_len, checkpointing=plan.gradient_checkpointing)
    seconds = tokens * per_token / (plan.machine.devices * plan.machine.peak_tflops * 1e12 * mfu)
    return seconds / 3600


def flops_per_token(size: ModelSize, *, params: int, seq_len: int, checkpointing: bool) -> float:
    """Training FLOPs per token: 6 P for forward + backward, 12 L h s for the attention scores, and
    one more forward (2 P + 4 L h s) when activations are recomputed. MFU = achieved / peak.

    >>> flops_per_token(get_size("125M"), params=100, seq_len=1, checkpointing=False) == 600 + 12 * 12 * 768
    True
    """
    attention = 12 * size.layers * size.hidden * seq_len
    return 6 * params + attention + ((2 * params + attention / 3) if checkpointing else 0)


def plan_table(*, vocab_size: int = GPT2_VOCAB_SIZE, architecture: str = DEFAULT_ARCHITECTURE) -> str:
    """The plan's sizes and tiny x the research plan's machines, as the README's Markdown table.

    The CPU ladder's rungs are left out: they exist to train on a laptop, and at the plan's
    vocabulary their counts would be mostly embedding ("ladder-1M" would read 7 M).
    """
    header = ("| size | params | machine | strategy | checkpointing | micro x accum | per device (GiB) "
              "| epoch of OpenHermes-2.5 at 40% MFU |")
    lines = [header, "|" + "---|" * 8]
    for name, size in SIZES.items():
        if size.role == "ladder":
            continue
        params = param_count(size, vocab_size=vocab_size, architecture=architecture)
        for machine in MACHINES.values():
            try:
                plan = plan_training(size, machine=machine, vocab_size=vocab_size, architecture=architecture)
            except ValueError as refusal:
                lines.append(f"| {name} | {params / 1e6:.0f} M | {machine.label} | does not fit: "
                             f"{str(refusal).split(': ', 1)[1]} | | | | |")
                continue
            hours = epoch_hours(plan, size=size, params=params, seq_len=size.max_length)
            parts = ", ".join(f"{k} {v:g}" for k, v in plan.parts_gib.items())
            lines.append(f"| {name} | {params / 1e6:.0f} M | {machine.label} | {plan.strategy} | "
                         f"{'on' if plan.gradient_checkpointing else 'off'} | {plan.micro_batch} x {plan.grad_accum} | "
                         f"**{plan.total_gib:g}** ({parts}) | {hours:.1f} h |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plan how a size trains on a machine, without training.")
    parser.add_argument("--size", choices=list(SIZES))
    parser.add_argument("--machine", choices=list(MACHINES), help="a named machine, or give --devices and --device-memory-gib")
    parser.add_argument("--devices", type=int)
    parser.add_argument("--device-memory-gib", type=float)
    parser.add_argument("--vocab-size", type=int, default=GPT2_VOCAB_SIZE)
    parser.add_argument("--table", action="store_true", help="every size x the plan's machines (README table)")
    args = parser.parse_args(argv)
    if args.table:
        print(plan_table(vocab_size=args.vocab_size))
        return 0
    if args.size is None or (args.machine is None and None in (args.devices, args.device_memory_gib)):
        parser.error("give --size and either --machine or --devices with --device-memory-gib")
    machine = MACHINES[args.machine] if args.machine else Machine(devices=args.devices,
                                                                  device_memory_gib=args.device_memory_gib)
    try:
        plan = plan_training(get_size(args.size), machine=machine, vocab_size=args.vocab_size)
    except ValueError as refusal:
        print(refusal, file=sys.stderr)
        return 2
    print(json.dumps(plan.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
