"""Batched generation equals the one-at-a-time loop, seeded sampling repeats, packed NLL is exact."""

from __future__ import annotations

import os
import time

import pytest
import torch

from eval_tiny_model import chat_rows, make_checkpoint, packed_blocks
from exp1_assets.evaluation import generation, metrics

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model")
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def prompts(n: int) -> list[list[dict]]:
    # Varied lengths (system prompt on every third row), so left padding really happens.
    return [row["messages"][:-1] for row in chat_rows(n)]


def test_batched_greedy_equals_one_at_a_time(tiny):
    model, tok = tiny
    ps = prompts(12)
    lengths = {len(tok(text, add_special_tokens=False)["input_ids"]) for text in generation.render_prompts(tok, ps)}
    assert len(lengths) > 1  # the batches mix prompt lengths
    batched = generation.generate_batched(model, tok, ps, max_new_tokens=16, batch_size=5)
    single = generation.generate_one_at_a_time(model, tok, ps, max_new_tokens=16)
    assert batched == single
    assert len({g.text for g in batched}) > 1 and all(g.text for g in batched)  # non-degenerate output
    assert all(g.n_tokens == 16 and not g.stopped for g in batched)  # a random model never says <|im_end|>
    assert tok.padding_side == "right"  # left padding was only borrowed


def test_seeded_sampling_repeats_and_seed_matters(tiny):
    model, tok = tiny
    ps = prompts(6)
    kwargs = dict(max_new_tokens=12, batch_size=4, do_sample=True, temperature=1.0, top_p=0.9,
                  repetition_penalty=1.1)
    first = generation.generate_batched(model, tok, ps, seed=7, **kwargs)
    again = generation.generate_batched(model, tok, ps, seed=7, **kwargs)
    other = generation.generate_batched(model, tok, ps, seed=8, **kwargs)
    greedy = generation.generate_batched(model, tok, ps, max_new_tokens=12, batch_size=4)
    assert first == again
    assert first != other and first != greedy


def test_decode_cuts_at_end_of_turn(tiny):
    _, tok = tiny
    eos = generation.end_of_turn_id(tok)
    hello = tok("Hello", add_special_tokens=False)["input_ids"]
    gen = generation._decode_new_tokens(tok, hello + [eos, tok.pad_token_id, tok.pad_token_id], eos_id=eos)
    assert gen == generation.Generation(text="Hello", n_tokens=len(hello) + 1, stopped=True)
    gen = generation._decode_new_tokens(tok, hello, eos_id=eos)
    assert gen.stopped is False and gen.n_tokens == len(hello)


def test_generation_rejects_bad_arguments(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="max_new_tokens"):
        generation.generate_batched(model, tok, prompts(1), max_new_tokens=0, batch_size=1)
    with pytest.raises(ValueError, match="temperature"):
        generation.generate_batched(model, tok, prompts(1), max_new_tokens=4, batch_size=1, do_sample=True,
                                    temperature=0.0)


def test_batched_is_much_faster_than_one_at_a_time(tiny):
    model, tok = tiny
    ps = prompts(32)
    started = time.perf_counter()
    generation.generate_one_at_a_time(model, tok, ps, max_new_tokens=24)
    single = time.perf_counter() - started
    batched = float("inf")
    for _ in range(2):  # best of two: the 2 cores are shared with other jobs
        started = time.perf_counter()
        generation.generate_batched(model, tok, ps, max_new_tokens=24, batch_size=32)
        batched = min(batched, time.perf_counter() - started)
    print(f"one-at-a-time {single:.2f}s, batched {batched:.2f}s, speed-up {single / batched:.1f}x")
    assert single / batched > 3  # measured ~10x+ on 2 shared cores; 3x keeps the test robust


def test_packed_nll_equals_unpacked_per_conversation(tiny):
    """Block-diagonal masking via position ids: packing must not change any conversation's NLL."""
    model, tok = tiny
    blocks = packed_blocks(tok, n_blocks=2, max_length=96)
    packed = metrics.token_nll_sums(model, blocks, batch_size=2, device="cpu", pad_token_id=tok.pad_token_id)
    alone = {"nll_assistant": 0.0, "tokens_assistant": 0}
    for block in blocks:
        starts = [i for i, p in enumerate(block["position_ids"]) if p == 0]
        for start, end in zip(starts, starts[1:] + [len(block["input_ids"])]):
            piece = {k: block[k][start:end] for k in ("input_ids", "labels", "position_ids")}
            if all(t == tok.pad_token_id for t in piece["input_ids"]):
                continue  # the filler
            sums = metrics.token_nll_sums(model, [piece], batch_size=1, device="cpu", pad_token_id=tok.pad_token_id)
            alone["nll_assistant"] += sums["nll_assistant"]
            alone["tokens_assistant"] += sums["tokens_assistant"]
    assert packed["tokens_assistant"] == alone["tokens_assistant"] > 0
    assert packed["nll_assistant"] == pytest.approx(alone["nll_assistant"], rel=1e-4)
    assert torch.isfinite(torch.tensor(packed["nll_all"]))
