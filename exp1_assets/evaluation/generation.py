"""Chat generation: batched with left padding and a KV cache, plus the old one-at-a-time loop.

Why batched: a one-prompt-at-a-time loop leaves a CPU/GPU idle on tiny matrix products and pays
per-step Python overhead once per token of every reply. Batching prompts of similar length
(sorted, so little padding), left-padded (so every row's next token sits at the same last
column), with positions counted over real tokens only, gives the same greedy output for a
fraction of the steps (decoding.py holds the loop; bench/RESULTS.md the numbers).

Generation stops at `<|im_end|>` (the chat template's end of turn), never at `<|endoftext|>`,
and the pad token is set explicitly so HF does not fall back to eos as padding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

END_OF_TURN = "<|im_end|>"


@dataclass(frozen=True)
class Generation:
    text: str  # decoded reply, special tokens removed
    n_tokens: int  # generated tokens, the closing <|im_end|> included
    stopped: bool  # hit <|im_end|> before max_new_tokens
    # Prompt tokens the model was fed: the rendered prompt's last `prompt_tokens` ids (fewer than
    # rendered only when the prompt passed the position budget). It describes the input, not the
    # reply, so equality ignores it: loops that don't record it (None) still compare equal.
    prompt_tokens: int | None = field(default=None, compare=False)


def end_of_turn_id(tokenizer: Any) -> int:
    token_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer has no {END_OF_TURN!r} token: generation could never stop")
    return int(token_id)


def render_prompts(tokenizer: Any, prompts_messages: Sequence[Sequence[dict]]) -> list[str]:
    """ChatML prompt strings ending with the assistant header."""
    return [tokenizer.apply_chat_template(list(m), tokenize=False, add_generation_prompt=True)
            for m in prompts_messages]


@contextlib.contextmanager
def _left_padding(tokenizer: Any) -> Iterator[None]:
    """Pad and truncate on the left: the assistant header at the end must survive."""
    previous = (tokenizer.padding_side, tokenizer.truncation_side)
    tokenizer.padding_side = tokenizer.truncation_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = previous


def prompt_budget(model: Any, *, max_new_tokens: int) -> int:
    """Prompt tokens that fit: positions beyond the model's range would be garbage (or crash)."""
    config = model.config
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not positions:
        return 1 << 30
    if max_new_tokens >= positions:
        raise ValueError(f"max_new_tokens: {max_new_tokens} leaves no room for a prompt in {positions} positions")
    return positions - max_new_tokens


def _check_generation_args(tokenizer: Any, *, max_new_tokens: int) -> None:
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens: must be positive, got {max_new_tokens}")
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer has no pad token: batched generation needs one distinct from <|im_end|>")


def _generate_kwargs(
    *, tokenizer: Any, max_new_tokens: int, do_sample: bool, temperature: float, top_p: float,
    repetition_penalty: float,
) -> dict[str, Any]:
    """`model.generate` keyword arguments for the one-at-a-time loop, validated like the batched path."""
    from exp1_assets.evaluation.decoding import Sampling

    _check_generation_args(tokenizer, max_new_tokens=max_new_tokens)
    Sampling(do_sample=do_sample, temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty)
    kwargs: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens, use_cache=True, do_sample=do_sample,
        eos_token_id=end_of_turn_id(tokenizer), pad_token_id=tokenizer.pad_token_id,
        repetition_penalty=repetition_penalty,
    )
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    return kwargs


def _decode_new_tokens(tokenizer: Any, new_ids: Any, *, eos_id: int, prompt_tokens: int | None = None) -> Generation:
    """Cut the generated row at the first <|im_end|> (the rest is padding) and decode it."""
    ids = [int(t) for t in new_ids]
    stopped = eos_id in ids
    if stopped:
        ids = ids[: ids.index(eos_id) + 1]
    text = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return Generation(text=text, n_tokens=len(ids), stopped=stopped, prompt_tokens=prompt_tokens)


def generate_batched(
    model: Any, tokenizer: Any, prompts_messages: Sequence[Sequence[dict]], *, max_new_tokens: int,
    batch_size: int, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
    repetition_penalty: float = 1.0, seed: int = 0, token_budget: int = 4096, prefill_rows: int | None = None,
) -> list[Generation]:
    """Generate one reply per conversation prefix, in the input order.

    Up to `batch_size` replies decode together (`decoding.decode_stream`): prompts are prefilled
    in groups of `prefill_rows` (default a quarter of `batch_size`) that join as rows finish, so
    the batch stays full until the prompts run out. A group also closes when its padded size
    (rows x longest prompt) would pass `token_budget`: one long outlier must not pad many short
    prompts to its length. Prompts go longest first, so a group's rows have similar lengths; and
    a group waits while joining would make the decoding cache (rows x width) pass twice that.

    Seeding: one generator seeded with `seed` drives all sampling, so a rerun with the same
    inputs and settings samples the same tokens (the schedule, and so the draws, depends on them).
    """
    import torch

    from exp1_assets.evaluation.decoding import Sampling, decode_stream

    if batch_size <= 0:
        raise ValueError(f"batch_size: must be positive, got {batch_size}")
    prefill_rows = max(1, batch_size // 4) if prefill_rows is None else prefill_rows
    if not 0 < prefill_rows <= batch_size:
        raise ValueError(f"prefill_rows: must be in 1..batch_size={batch_size}, got {prefill_rows}")
    _check_generation_args(tokenizer, max_new_tokens=max_new_tokens)
    sampling = Sampling(do_sample=do_sample, temperature=temperature, top_p=top_p,
                        repetition_penalty=repetition_penalty)
    eos_id = end_of_turn_id(tokenizer)
    budget = prompt_budget(model, max_new_tokens=max_new_tokens)
    # One batched tokenizer call; left truncation keeps the assistant header at the end.
    prompt_ids = [ids[-budget:] for ids in
                  tokenizer(render_prompts(tokenizer, prompts_messages), add_special_tokens=False)["input_ids"]]
    lengths = [len(ids) for ids in prompt_ids]
    order = sorted(range(len(prompt_ids)), key=lambda i: -lengths[i])
    groups = list(_batches(order, lengths, batch_size=prefill_rows, token_budget=token_budget))
    model.eval()
    with torch.inference_mode():
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        replies = decode_stream(model, prompt_ids, groups=groups, max_rows=batch_size, max_new_tokens=max_new_tokens,
                                eos_token_id=eos_id, pad_token_id=tokenizer.pad_token_id, sampling=sampling,
                                generator=generator, max_cells=2 * token_budget)
    return [_decode_new_tokens(tokenizer, reply, eos_id=eos_id, prompt_tokens=len(ids))
            for reply, ids in zip(replies, prompt_ids)]


def _batches(order: Sequence[int], lengths: Sequence[int], *, batch_size: int,
             token_budget: int) -> Iterator[list[int]]:
    """Group indices (longest first) into batches under both limits.

    >>> list(_batches([0, 1, 2, 3], [100, 10, 10, 10], batch_size=4, token_budget=120))
    [[0], [1, 2, 3]]
    """
    current: list[int] = []
    for index in order:
        longest = lengths[current[0]] if current else lengths[index]
        if current and (len(current) >= batch_size or (len(current) + 1) * longest > token_budget):
            yield current
            current = []
        current.append(index)
    if current:
        yield current


def generate_one_at_a_time(
    model: Any, tokenizer: Any, prompts_messages: Sequence[Sequence[dict]], *, max_new_tokens: int,
    do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
    repetition_penalty: float = 1.0, seed: int = 0,
) -> list[Generation]:
    """The research scripts' loop: one unpadded prompt per `generate` call (reference + benchmark)."""
    import torch

    kwargs = _generate_kwargs(tokenizer=tokenizer, max_new_tokens=max_new_tokens, do_sample=do_sample,
                              temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty)
    device = next(model.parameters()).device
    budget = prompt_budget(model, max_new_tokens=max_new_tokens)
    results = []
    model.eval()
    with torch.inference_mode(), _left_padding(tokenizer):
        for index, text in enumerate(render_prompts(tokenizer, prompts_messages)):
            enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=budget,
                            add_special_tokens=False).to(device)
            torch.manual_seed(seed + index)
            out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], **kwargs)
            results.append(_decode_new_tokens(tokenizer, out[0, enc["input_ids"].shape[1]:],
                                              eos_id=kwargs["eos_token_id"],
                                              prompt_tokens=enc["input_ids"].shape[1]))
    return results
