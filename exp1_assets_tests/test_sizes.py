"""The model-size registry (pure data) and what each size costs: parameter counts, memory estimates."""

from __future__ import annotations

import dataclasses

import pytest

from exp1_assets.sizes import GPT2_VOCAB_SIZE, SIZES, get_size
from exp1_assets.training.memory import param_count

PLAN_SHAPES = {  # research plan: hidden x layers x heads x intermediate, batch, accum, lr
    "125M": (768, 12, 12, 3072, 16, 2, 2e-4),
    "350M": (1024, 20, 16, 4096, 8, 4, 2e-4),
    "500M": (1024, 24, 16, 4096, 4, 8, 2e-4),
    "1B": (1536, 24, 24, 6144, 2, 16, 1.5e-4),
    "1.5B": (1600, 32, 25, 6400, 1, 32, 1e-4),
}


def test_registry_keys_are_the_partition_keys():
    assert list(SIZES) == ["tiny", "125M", "350M", "500M", "1B", "1.5B"]


@pytest.mark.parametrize("name", list(PLAN_SHAPES))
def test_plan_shapes_and_training_defaults(name):
    size = get_size(name)
    hidden, layers, heads, ffn, batch, accum, lr = PLAN_SHAPES[name]
    assert (size.hidden, size.layers, size.heads, size.intermediate) == (hidden, layers, heads, ffn)
    assert (size.per_device_batch, size.grad_accum, size.learning_rate) == (batch, accum, lr)
    assert size.max_positions == 2048
    assert size.gradient_checkpointing == (name != "125M")
    assert size.dropout == 0.0


@pytest.mark.parametrize("name", list(PLAN_SHAPES))
def test_gpt2_param_count_matches_name_or_is_documented(name):
    size = get_size(name)
    count = param_count(size, vocab_size=GPT2_VOCAB_SIZE, architecture="gpt2")
    off = count / size.nominal_params - 1
    if abs(off) <= 0.05:
        return
    # The note must state the computed count (in M, one decimal) and the deviation.
    assert f"{count / 1e6:.1f}M" in size.note, (name, count, size.note)
    assert f"{off * 100:.1f}%" in size.note, (name, off, size.note)


def test_known_exact_counts():
    # GPT-2 small at vocab 50257 with 2048 positions: 124,439,808 + (2048-1024)*768.
    assert param_count(get_size("125M"), architecture="gpt2") == 124_439_808 + 1024 * 768
    assert param_count(get_size("1B"), architecture="llama") == 983_239_680


def test_tiny_is_a_few_million_parameters_at_a_small_vocab():
    assert 2_000_000 < param_count(get_size("tiny"), vocab_size=4096, architecture="llama") < 10_000_000


def test_get_size_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown model size '2B'.*tiny, 125M, 350M, 500M, 1B, 1.5B"):
        get_size("2B")


def test_model_size_validation_names_the_field():
    tiny = get_size("tiny")
    with pytest.raises(ValueError, match="hidden .* divisible by heads"):
        dataclasses.replace(tiny, heads=3)
    with pytest.raises(ValueError, match="learning_rate"):
        dataclasses.replace(tiny, learning_rate=0.0)
    with pytest.raises(ValueError, match="max_length"):
        dataclasses.replace(tiny, max_length=4096)
    with pytest.raises(ValueError, match="per_device_batch"):
        dataclasses.replace(tiny, per_device_batch=0)
    with pytest.raises(ValueError, match="dropout"):
        dataclasses.replace(tiny, dropout=1.5)


def test_activation_checkpointing_keeps_fewer_activation_bytes():
    from exp1_assets.training.memory import activation_bytes

    shape = dict(batch=1, seq_len=2048, vocab_size=50257, precision="bf16")
    size = get_size("1.5B")
    assert activation_bytes(size, **shape, checkpointing=True) < activation_bytes(size, **shape, checkpointing=False)
    with pytest.raises(ValueError, match="precision"):
        activation_bytes(size, **{**shape, "precision": "int8"}, checkpointing=False)


def test_sizes_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, exp1_assets.sizes; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_sizes_module_is_pure_data_and_imports_nothing_from_the_package():
    """The registry sits below training/ (model.py imports it): importing it pulls in no other package module."""
    import subprocess
    import sys

    code = ("import sys, exp1_assets.sizes; "
            "print(sorted(m for m in sys.modules if m.startswith('exp1_assets.') and m != 'exp1_assets.sizes'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_notes_only_where_needed():
    for name, size in SIZES.items():
        if size.nominal_params and not size.note:
            count = param_count(size, architecture="gpt2")
            assert abs(count / size.nominal_params - 1) <= 0.05, name
