"""Batched generation equals the one-at-a-time loop, seeded sampling repeats, packed NLL is exact."""

from __future__ import annotations

import os

import pytest
import torch

from eval_tiny_model import chat_rows, make_checkpoint, packed_blocks
from exp1_assets.evaluation import generation, metrics
from exp1_assets.evaluation.decoding import decode_stream

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
    rendered = tok(generation.render_prompts(tok, ps), add_special_tokens=False)["input_ids"]
    assert [g.prompt_tokens for g in batched] == [g.prompt_tokens for g in single] == [len(i) for i in rendered]
    assert len({g.text for g in batched}) > 1 and all(g.text for g in batched)  # non-degenerate output
    assert all(g.n_tokens == 16 and not g.stopped for g in batched)  # a random model never says <|im_end|>
    assert tok.padding_side == "right"  # left padding was only borrowed


def test_prompts_longer_than_the_budget_are_cut_on_the_left_alike(tiny):
    """512 positions - 500 new tokens leaves 12 prompt tokens: both paths keep the same last 12."""
    model, tok = tiny
    ps = prompts(6)
    assert min(len(ids) for ids in tok(generation.render_prompts(tok, ps), add_special_tokens=False)["input_ids"]) > 12
    batched = generation.generate_batched(model, tok, ps, max_new_tokens=500, batch_size=4)
    single = generation.generate_one_at_a_time(model, tok, ps, max_new_tokens=500)
    assert batched == single and sum(g.n_tokens for g in batched) > 6 * 50
    # What was fed is recorded (predictions.jsonl `prompt_tokens`): the rendering's last 12 ids.
    assert [g.prompt_tokens for g in batched] == [g.prompt_tokens for g in single] == [12] * 6


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


def decode_batch(model, prompt_ids, **kwargs) -> list[list[int]]:
    """All prompts prefilled together in one group: a plain batch."""
    return decode_stream(model, prompt_ids, groups=[list(range(len(prompt_ids)))], max_rows=len(prompt_ids), **kwargs)


def test_finished_rows_leave_the_batch(tiny):
    """A row that emits the stop token stops costing compute; the others continue unchanged."""

    model, tok = tiny
    prompt_ids = tok(generation.render_prompts(tok, prompts(4)), add_special_tokens=False)["input_ids"]
    shapes: list[tuple[int, ...]] = []
    hook = model.register_forward_pre_hook(lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                           with_kwargs=True)
    try:
        with torch.inference_mode():
            free = decode_batch(model, prompt_ids, max_new_tokens=10, eos_token_id=-1, pad_token_id=tok.pad_token_id)
            assert [s[0] for s in shapes] == [4] * 10  # prefill + 9 decode steps, all rows alive
            stop = free[0][2]  # row 0's third greedy token becomes the stop token
            shapes.clear()
            stopped = decode_batch(model, prompt_ids, max_new_tokens=10, eos_token_id=stop,
                                   pad_token_id=tok.pad_token_id)
    finally:
        hook.remove()
    for full, cut in zip(free, stopped):  # each reply is the free-running one up to its first stop token
        assert cut == (full[: full.index(stop) + 1] if stop in full else full)
    assert len(stopped[0]) <= 3
    alive = [s[0] for s in shapes[1:]]  # decode steps only
    assert alive == sorted(alive, reverse=True) and alive[-1] < 4  # rows only ever leave
    # Every generated token but each reply's last is fed back exactly once: no row rides along.
    assert sum(alive) == sum(len(r) - 1 for r in stopped) < sum(len(r) - 1 for r in free)


def test_prompts_join_as_rows_finish_and_outputs_do_not_change(tiny):
    """Continuous batching: at most max_rows decode together, later groups join, same tokens."""

    model, tok = tiny
    prompt_ids = tok(generation.render_prompts(tok, prompts(5)), add_special_tokens=False)["input_ids"]
    shapes: list[tuple[int, ...]] = []
    with torch.inference_mode():
        together = decode_batch(model, prompt_ids, max_new_tokens=6, eos_token_id=-1, pad_token_id=tok.pad_token_id)
        hook = model.register_forward_pre_hook(lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                               with_kwargs=True)
        try:
            streamed = decode_stream(model, prompt_ids, groups=[[0, 1], [2], [3], [4]], max_rows=2, max_new_tokens=6,
                                     eos_token_id=-1, pad_token_id=tok.pad_token_id)
        finally:
            hook.remove()
    assert streamed == together
    decode_rows = [s[0] for s in shapes if s[1] == 1]
    assert max(decode_rows) == 2  # never more than max_rows
    assert len([s for s in shapes if s[1] > 1]) == 4  # one prefill per group (every prompt is > 1 token)
    with pytest.raises(ValueError, match="max_rows"):
        decode_stream(model, prompt_ids, groups=[[0, 1, 2]], max_rows=2, max_new_tokens=2, eos_token_id=-1,
                      pad_token_id=tok.pad_token_id)


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
