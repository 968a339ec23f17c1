"""The model-size registry (pure data) and what each size costs: parameter counts, memory estimates."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import exp1_assets.sizes
from exp1_assets.sizes import GPT2_VOCAB_SIZE, SIZES, get_size
from exp1_assets.training.memory import param_count

ROOT = Path(__file__).resolve().parents[1]
# What the default run's tokenizer holds: the built-in corpus's BPE, asked for 4096, stops at 3853.
TRAINED_VOCAB = 3853
LADDER_SHAPES = {  # hidden x layers x heads x intermediate, exact llama count at TRAINED_VOCAB
    "ladder-1M": (128, 2, 2, 512, 1_018_112),
    "ladder-2.5M": (192, 3, 3, 768, 2_510_592),
    "ladder-16M": (384, 6, 6, 1536, 15_640_320),
}

PLAN_SHAPES = {  # research plan: hidden x layers x heads x intermediate, batch, accum, lr
    "125M": (768, 12, 12, 3072, 16, 2, 2e-4),
    "350M": (1024, 20, 16, 4096, 8, 4, 2e-4),
    "500M": (1024, 24, 16, 4096, 4, 8, 2e-4),
    "1B": (1536, 24, 24, 6144, 2, 16, 1.5e-4),
    "1.5B": (1600, 32, 25, 6400, 1, 32, 1e-4),
}


def test_registry_keys_are_the_partition_keys():
    assert list(SIZES) == ["tiny", "125M", "350M", "500M", "1B", "1.5B", "ladder-1M", "ladder-2.5M", "ladder-16M"]


def test_each_size_is_marked_with_its_role():
    assert {name: size.role for name, size in SIZES.items()} == {
        "tiny": "debug", **{name: "plan" for name in PLAN_SHAPES}, **{name: "ladder" for name in LADDER_SHAPES}}
    assert all(name.startswith("ladder-") == (size.role == "ladder") for name, size in SIZES.items())
    with pytest.raises(ValueError, match=r"ModelSize 'tiny': role must be one of \('plan', 'debug', 'ladder'\)"):
        dataclasses.replace(get_size("tiny"), role="experiment")


def _llama_tied_params(hidden: int, layers: int, intermediate: int, vocab: int) -> int:
    """Embedding (tied with the head) + per layer q/k/v/o, gate/up/down and two RMSNorms + final norm."""
    return vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * intermediate + 2 * hidden) + hidden


@pytest.mark.parametrize("name", list(LADDER_SHAPES))
def test_ladder_counts_at_the_trained_vocabulary_match_the_hand_formula_and_the_name(name):
    hidden, layers, heads, ffn, expected = LADDER_SHAPES[name]
    size = get_size(name)
    assert (size.hidden, size.layers, size.heads, size.intermediate) == (hidden, layers, heads, ffn)
    count = param_count(size, vocab_size=TRAINED_VOCAB, architecture="llama")
    assert count == _llama_tied_params(hidden, layers, ffn, TRAINED_VOCAB) == expected
    promised = float(re.fullmatch(r"ladder-([\d.]+)M", name).group(1)) * 1e6
    assert abs(count / promised - 1) <= 0.05, (name, count)
    assert size.nominal_params is None  # no promise at the plan's vocabulary 50257
    assert f"{expected:,}" in exp1_assets.sizes.__doc__  # the docstring's table states it


def test_the_ladder_trains_on_the_same_tokens_as_tiny_with_its_settings():
    tiny = get_size("tiny")
    assert _llama_tied_params(256, 4, 1024, TRAINED_VOCAB) == param_count(tiny, vocab_size=TRAINED_VOCAB)
    for name in LADDER_SHAPES:
        size = get_size(name)
        # 300 steps x 8 blocks x 256 tokens = 614,400 tokens for every size
        assert size.max_steps * size.effective_batch * size.max_length == 614_400
        same = ("per_device_batch", "grad_accum", "max_length", "max_steps", "max_positions", "learning_rate",
                "warmup_ratio", "weight_decay", "betas", "clip", "dropout", "gradient_checkpointing")
        assert {f: getattr(size, f) for f in same} == {f: getattr(tiny, f) for f in same}
        assert size.hidden // size.heads == 64 and size.intermediate == 4 * size.hidden


def test_make_ladder_materializes_the_data_once_then_each_ladder_size_and_tiny():
    makefile = (ROOT / "Makefile").read_text()
    [sizes] = re.findall(r"^LADDER_SIZES := (.+)$", makefile, re.M)
    expected = sorted(["tiny", *LADDER_SHAPES], key=lambda n: param_count(get_size(n), vocab_size=TRAINED_VOCAB))
    assert sizes.split() == expected  # smallest first
    recipe = makefile.split("\nladder: setup\n", 1)[1].split("\n\n", 1)[0]
    assert "--select 'group:data'" in recipe and "--select 'model_checkpoint*' --partition $$size" in recipe
    assert "for size in $(LADDER_SIZES)" in recipe and "size_comparison/comparison.md" in recipe
    assert "make ladder" in (ROOT / "README.md").read_text()


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
