"""The model-size registry: shapes and per-size training defaults (pure data).

One `ModelSize` per partition key: the research plan's sizes (`125M`, `350M`, `500M`, `1B`, `1.5B`,
role "plan"), `tiny` (role "debug") and a CPU scaling ladder (`ladder-1M`, `ladder-2.5M`,
`ladder-16M`, role "ladder"; not the plan's, see below). The plan's shapes,
batch sizes, accumulation and learning rates are the research plan's (GPT-2 style), kept as-is;
what the plan's names promise and what the shapes deliver is computed, not guessed
(`training.memory.param_count`, built on the `meta` device) and written down in each size's `note`.

Exact parameter counts at vocab 50257, tied embeddings, max_positions 2048 (M = 1e6):

    size   shape (h x L x heads x ffn)   gpt2        llama (tied)   gpt2 vs name
    125M    768 x 12 x 12 x 3072         125.23 M     151.86 M      +0.2%
    350M   1024 x 20 x 16 x 4096         305.49 M     387.05 M     -12.7%
    500M   1024 x 24 x 16 x 4096         355.87 M     454.17 M     -28.8%
    1B     1536 x 24 x 24 x 6144         760.30 M     983.23 M     -24.0%
    1.5B   1600 x 32 x 25 x 6400        1067.40 M    1391.23 M     -28.8%

(GPT-2 "medium" 355M is 1024x24, so the plan's "350M" at 1024x20 is ~305M and its "500M" is the
355M shape; 1.5B-class GPT-2 XL is 1600x48, the plan's 1600x32 is ~1.07B.) Llama's SwiGLU MLP has
three ffn matrices instead of two, hence its larger counts at the same shape.

Default architecture, measured on the `tiny` shape (256x4x4x1024) with a 400-token byte-level BPE,
the same packed templated ChatML blocks (seq 256, batch 8, lr 1e-3 cosine, 3% warmup, 60 steps,
seed 0, fp32, 2 shared CPU cores):

    arch   params   train loss @10/20/30/40/50/60           val loss (before -> after)   s/step
    gpt2   3.39 M   3.31 1.43 0.99 0.84 0.75 0.714          5.956 -> 0.726               0.40
    llama  4.30 M   4.10 1.77 1.08 0.83 0.68 0.625          5.995 -> 0.640               0.48

GPT-2 drops faster in the first ~30 steps, Llama (RoPE/SwiGLU/RMSNorm) ends 12% lower in val
loss for ~1.2x the step time (it has 27% more parameters at this shape). At equal wall time
(llama's step 50 ~ gpt2's step 60, ~24 s) llama is still lower (0.679 vs 0.714), so `llama` is the default;
`gpt2` stays selectable per spec for the research plan's baseline.

Dropout defaults to 0.0 everywhere: dropout > 0 pushes SDPA off its fused kernel (a tiny GPT-2
ran ~1.7x slower per step with 0.1 than with 0 on CPU, DESIGN.md), and from-scratch runs that see
each token about once do not need the regularization. The spec can override it.

The CPU scaling ladder (not the research plan's sizes): `make ladder` trains it with `tiny` so
that the size comparison can fit final validation loss against parameters on a laptop (2 cores).
Every rung keeps tiny's proportions (head dim 64, ffn 4 x hidden) and grows width and depth
together (hidden = 64 x layers; tiny is the 256x4 rung), and trains with tiny's settings: batch
8 x 256-token blocks, 300 steps, lr 1e-3 cosine with 5% warmup, so every size sees the same
614,400 tokens (2,400 packed blocks, ~0.69 of the built-in corpus's 3,482 training blocks). The
names are the llama counts at the vocabulary the default run trains: the built-in corpus's BPE,
asked for 4,096 tokens (`TokenizerSpec.vocab_size`), stops at 3,853 (tied embeddings):

    size          h x L x heads x ffn    params at vocab 3,853   of them embedding   step time vs tiny
    ladder-1M      128x2x2x512            1,018,112               493,184             x0.25-0.37
    ladder-2.5M    192x3x3x768            2,510,592               739,776             x0.52-0.63
    tiny           256x4x4x1024           5,182,976               986,368             x1
    ladder-16M     384x6x6x1536          15,640,320             1,479,552             x2.2-2.5

(step time: a training step of 8 x 256 tokens, 2 threads, fp32, the project's packed blocks, the
four shapes interleaved step by step; three runs of 10-30 steps each on a shared machine under
load 4-10. FLOPs per token give x0.20 / x0.49 / x1 / x2.95.) A run records the count it
trained in `train_result.json`; the comparison fits those, not this table.

This module imports nothing from the rest of the package and no torch: the Dagster code server
imports it on every reload, and the model code (training/) imports it. Parameter counts and memory
estimates, which build models, live in `exp1_assets.training.memory`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, get_args

GPT2_VOCAB_SIZE = 50257

SizeRole = Literal["plan", "debug", "ladder"]
SIZE_ROLES: tuple[str, ...] = get_args(SizeRole)

# Chosen from the tiny-model measurement in the module docstring (lower loss at equal steps).
DEFAULT_ARCHITECTURE = "llama"


@dataclass(frozen=True)
class ModelSize:
    """One model size: its shape and the per-size training recommendations."""

    name: str
    role: SizeRole
    """What the size is for. "plan": one of the research plan's sizes (125M ... 1.5B), its shape and
    training recommendations kept as the plan gives them. "debug": not the plan's; `tiny`, the
    few-million-parameter size that runs the whole graph on a laptop CPU in minutes (`make run`).
    "ladder": not the plan's; a CPU scaling ladder (`make ladder`) that trains with tiny's settings
    on the same tokens, so that the size comparison can fit loss against parameters on a laptop."""
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int
    per_device_batch: int
    grad_accum: int
    learning_rate: float
    warmup_ratio: float = 0.03
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = 1.0
    gradient_checkpointing: bool = False
    dropout: float = 0.0  # see module docstring: 0 keeps SDPA on its fused path
    max_length: int = 2048  # default packed block length (tokens per row)
    max_steps: int | None = None  # None: train for `num_epochs` instead
    num_epochs: float = 3.0
    nominal_params: int | None = None  # what the name promises; None = no promise (tiny)
    note: str | None = None  # where the name and the computed count disagree by more than 5%

    def __post_init__(self) -> None:
        if self.role not in SIZE_ROLES:
            raise ValueError(f"ModelSize {self.name!r}: role must be one of {SIZE_ROLES}, got {self.role!r}")
        for name in ("hidden", "layers", "heads", "intermediate", "max_positions",
                     "per_device_batch", "grad_accum", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelSize {self.name!r}: {name} must be a positive int, got {value!r}")
        if self.hidden % self.heads:
            raise ValueError(
                f"ModelSize {self.name!r}: hidden ({self.hidden}) must be divisible by heads ({self.heads})"
            )
        if (self.hidden // self.heads) % 2:
            raise ValueError(f"ModelSize {self.name!r}: head dim {self.hidden // self.heads} must be even (RoPE)")
        if self.max_length > self.max_positions:
            raise ValueError(
                f"ModelSize {self.name!r}: max_length ({self.max_length}) exceeds max_positions ({self.max_positions})"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"ModelSize {self.name!r}: learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"ModelSize {self.name!r}: warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelSize {self.name!r}: dropout must be in [0, 1), got {self.dropout}")
        if self.weight_decay < 0 or self.clip <= 0:
            raise ValueError(f"ModelSize {self.name!r}: weight_decay must be >= 0 and clip > 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"ModelSize {self.name!r}: betas must be two values in [0, 1), got {self.betas}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"ModelSize {self.name!r}: max_steps must be positive or None, got {self.max_steps}")
        if self.max_steps is None and not self.num_epochs > 0:
            raise ValueError(f"ModelSize {self.name!r}: num_epochs must be positive when max_steps is None")

    @property
    def effective_batch(self) -> int:
        """Sequences per optimizer step on one device (per_device_batch x grad_accum)."""
        return self.per_device_batch * self.grad_accum


def _plan_size(name: str, hidden: int, layers: int, heads: int, *, batch: int, accum: int,
               lr: float, checkpointing: bool, nominal: int, note: str | None = None) -> ModelSize:
    return ModelSize(
        name=name, role="plan", hidden=hidden, layers=layers, heads=heads, intermediate=4 * hidden,
        max_positions=2048, per_device_batch=batch, grad_accum=accum, learning_rate=lr,
        gradient_checkpointing=checkpointing, nominal_params=nominal, note=note,
    )


# A few million parameters at a ~4-8k trained vocabulary (16.5 M at 50257, mostly embedding):
# learns the built-in corpus on a laptop CPU in minutes. High lr + short warmup because the
# runs are short; batch 8 x accum 1 keeps a CPU step well under a second at 256 tokens.
_TINY = ModelSize(
    name="tiny", role="debug", hidden=256, layers=4, heads=4, intermediate=1024, max_positions=512,
    per_device_batch=8, grad_accum=1, learning_rate=1e-3, warmup_ratio=0.05,
    max_length=256, max_steps=300,
)


def _ladder_size(name: str, *, layers: int) -> ModelSize:
    """A rung of the CPU ladder: tiny's training settings (the same tokens) and proportions, hidden = 64 x layers."""
    hidden = 64 * layers
    return dataclasses.replace(_TINY, name=name, role="ladder", hidden=hidden, layers=layers,
                               heads=hidden // 64, intermediate=4 * hidden)


SIZES: dict[str, ModelSize] = {
    "tiny": _TINY,
    "125M": _plan_size("125M", 768, 12, 12, batch=16, accum=2, lr=2e-4, checkpointing=False,
                       nominal=125_000_000),
    "350M": _plan_size("350M", 1024, 20, 16, batch=8, accum=4, lr=2e-4, checkpointing=True,
                       nominal=350_000_000,
                       note="1024x20 is 305.5M params as GPT-2 at vocab 50257 (-12.7%); "
                            "the 355M GPT-2 medium shape is 1024x24 (our '500M')."),
    "500M": _plan_size("500M", 1024, 24, 16, batch=4, accum=8, lr=2e-4, checkpointing=True,
                       nominal=500_000_000,
                       note="1024x24 is 355.9M params as GPT-2 at vocab 50257 (-28.8%): "
                            "it is GPT-2 medium; 454.2M as llama with tied embeddings."),
    "1B": _plan_size("1B", 1536, 24, 24, batch=2, accum=16, lr=1.5e-4, checkpointing=True,
                     nominal=1_000_000_000,
                     note="1536x24 is 760.3M params as GPT-2 at vocab 50257 (-24.0%); "
                          "983.2M as llama with tied embeddings (-1.7%)."),
    "1.5B": _plan_size("1.5B", 1600, 32, 25, batch=1, accum=32, lr=1e-4, checkpointing=True,
                       nominal=1_500_000_000,
                       note="1600x32 is 1067.4M params as GPT-2 at vocab 50257 (-28.8%; GPT-2 XL "
                            "1.5B is 1600x48); 1391.2M as llama with tied embeddings (-7.3%)."),
    # Not the plan's: the CPU scaling ladder (`make ladder`), after the plan's sizes so that
    # their partition order stays as it was.
    "ladder-1M": _ladder_size("ladder-1M", layers=2),
    "ladder-2.5M": _ladder_size("ladder-2.5M", layers=3),
    "ladder-16M": _ladder_size("ladder-16M", layers=6),
}


def get_size(name: str) -> ModelSize:
    """The registered size called `name`.

    >>> get_size("125M").hidden
    768
    """
    try:
        return SIZES[name]
    except KeyError:
        raise ValueError(f"size: unknown model size {name!r}; valid sizes: {', '.join(SIZES)}") from None
