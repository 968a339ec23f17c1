"""What a model size costs: its exact parameter count and its activation bytes (training/memory_plan.py adds the rest).

Kept apart from the size registry (`exp1_assets.sizes`, pure data) because counting parameters
builds the model (on torch's `meta` device: no memory), and the model code imports the registry.
torch and transformers are imported inside the functions (as in training/model.py): the Dagster
code server imports this module when it plans a run.
"""

from __future__ import annotations

from typing import Literal

from exp1_assets.sizes import DEFAULT_ARCHITECTURE, GPT2_VOCAB_SIZE, ModelSize
from exp1_assets.training.model import build_model

Precision = Literal["fp32", "bf16", "fp16"]
PRECISION_BYTES: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2}


def param_count(size: ModelSize, *, vocab_size: int = GPT2_VOCAB_SIZE,
                architecture: str = DEFAULT_ARCHITECTURE) -> int:
    """Exact number of trainable parameters (tied weights counted once), without allocating.

    The model is built on torch's `meta` device, so even 1.5B costs no memory.
    """
    import torch

    with torch.device("meta"):
        model = build_model(size, architecture=architecture, vocab_size=vocab_size,
                            pad_token_id=None, bos_token_id=None, eos_token_id=None)
    return sum(p.numel() for p in model.parameters())  # parameters() yields tied tensors once


def activation_bytes(size: ModelSize, *, batch: int, seq_len: int, vocab_size: int, precision: Precision,
                     checkpointing: bool) -> int:
    """Activation memory of one micro-batch (Korthikanti et al. 2022, fused attention kernel).

    ~34*b*s*h bytes per layer at 16 bit, plus the fp32 logits and their gradient (2*b*s*V*4). With
    gradient checkpointing only each layer's input (b*s*h) is kept, plus one layer's full
    activations during the recompute.

    >>> from exp1_assets.sizes import get_size
    >>> full = activation_bytes(get_size("125M"), batch=1, seq_len=1024, vocab_size=50257, precision="bf16",
    ...                         checkpointing=False)
    >>> ckpt = activation_bytes(get_size("125M"), batch=1, seq_len=1024, vocab_size=50257, precision="bf16",
    ...                         checkpointing=True)
    >>> ckpt < full
    True
    """
    if precision not in PRECISION_BYTES:
        raise ValueError(f"precision: {precision!r} is not one of {tuple(PRECISION_BYTES)}")
    tokens = batch * seq_len
    per_layer = 34 * tokens * size.hidden * PRECISION_BYTES[precision] / 2  # the 34 assumes 16-bit
    logits = 2 * tokens * vocab_size * 4
    if checkpointing:
        return int(size.layers * tokens * size.hidden * PRECISION_BYTES[precision] + per_layer + logits)
    return int(size.layers * per_layer + logits)

