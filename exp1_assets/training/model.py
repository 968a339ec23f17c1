"""Model construction: a `ModelSize` + tokenizer ids -> a randomly initialized causal LM.

Two architecture families share one registry of shapes (`exp1_assets.sizes`):
- `gpt2`:  GPT2Config / GPT2LMHeadModel — learned absolute positions, GELU MLP, LayerNorm,
  tied input/output embeddings (the research plan's baseline).
- `llama`: LlamaConfig / LlamaForCausalLM — RoPE, SwiGLU MLP, RMSNorm, full multi-head
  attention (num_key_value_heads = heads). Embeddings are tied here too: at these sizes the
  untied output matrix costs up to a third of the parameters for no measured gain, and tying
  keeps the two families' parameter counts comparable.

The attention implementation is a training setting (`TrainSpec.attn_implementation`):
- `sdpa` (default): with packed rows (position_ids restarting per document, attention_mask=None)
  transformers builds a block-diagonal mask, so documents packed into one row do not attend to each
  other (DESIGN.md, "Known traps"). Exact, but the dense mask keeps SDPA off the flash kernel on GPUs.
- `eager`: the same mask, plain matmuls; slow, a reference.
- `flash_attention_2` (needs the flash-attn package and a CUDA device): transformers turns the
  restarting position_ids into cumulative sequence lengths and runs the varlen kernel, no mask.
`flex_attention` is not offered: on CPU it did not keep packed documents apart from position_ids
alone (max logit difference 0.18). A test checks packed == unpacked logits for every
implementation that runs on the machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:  # keep `import exp1_assets.training.model` cheap for type checkers only
    from transformers import PretrainedConfig, PreTrainedModel

    from exp1_assets.sizes import ModelSize

Architecture = Literal["gpt2", "llama"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
AttentionImplementation = Literal["sdpa", "eager", "flash_attention_2"]
ATTENTION_IMPLEMENTATIONS: tuple[str, ...] = get_args(AttentionImplementation)


def build_config(
    size: "ModelSize",
    *,
    architecture: str,
    vocab_size: int,
    pad_token_id: int | None,
    bos_token_id: int | None,
    eos_token_id: int | None,
    dropout: float | None = None,
    attn_implementation: AttentionImplementation = "sdpa",
) -> "PretrainedConfig":
    """The transformers config for `size` in the given architecture family.

    `dropout=None` takes the size's default (0.0: see `exp1_assets.sizes`).
    """
    from transformers import GPT2Config, LlamaConfig

    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture: {architecture!r} is not one of {ARCHITECTURES}")
    if vocab_size <= 0:
        raise ValueError(f"vocab_size: must be positive, got {vocab_size}")
    dropout = size.dropout if dropout is None else dropout
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: must be in [0, 1), got {dropout}")
    ids = dict(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id)

    if architecture == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size,
            n_positions=size.max_positions,
            n_embd=size.hidden,
            n_layer=size.layers,
            n_head=size.heads,
            n_inner=size.intermediate,
            activation_function="gelu_new",
            resid_pdrop=dropout,
            embd_pdrop=dropout,
            attn_pdrop=dropout,
            tie_word_embeddings=True,
            use_cache=True,
            **ids,
        )
    else:
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=size.hidden,
            intermediate_size=size.intermediate,
            num_hidden_layers=size.layers,
            num_attention_heads=size.heads,
            num_key_value_heads=size.heads,
            max_position_embeddings=size.max_positions,
            attention_dropout=dropout,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            use_cache=True,
            **ids,
        )
    config._attn_implementation = require_attention(attn_implementation)
    return config


def build_model(
    size: "ModelSize",
    *,
    architecture: str,
    vocab_size: int,
    pad_token_id: int | None,
    bos_token_id: int | None,
    eos_token_id: int | None,
    dropout: float | None = None,
    seed: int | None = None,
    attn_implementation: AttentionImplementation = "sdpa",
) -> "PreTrainedModel":
    """A freshly initialized causal LM (fp32) on the current default device.

    Under `with torch.device("meta"):` this allocates nothing (used by `training.memory.param_count`).
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = build_config(
        size,
        architecture=architecture,
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        dropout=dropout,
        attn_implementation=attn_implementation,
    )
    if seed is not None:
        torch.manual_seed(seed)  # identical init on every rank and every relaunch
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)


def require_attention(name: str) -> str:
    """`name` if this machine can run it, else a ValueError that says what is missing.

    >>> require_attention("sdpa")
    'sdpa'
    >>> require_attention("flex_attention")
    Traceback (most recent call last):
    ...
    ValueError: attn_implementation: 'flex_attention' is not one of ('sdpa', 'eager', 'flash_attention_2')
    """
    import importlib.util

    if name not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation: {name!r} is not one of {ATTENTION_IMPLEMENTATIONS}")
    if name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ValueError("attn_implementation: 'flash_attention_2' needs the flash-attn package (and a CUDA "
                         "device) where the job runs; use 'sdpa' there")
    return name
