"""One batch of left-padded prompts -> new token ids: a lean KV-cache decode loop.

Why not `model.generate` per batch: it keeps decoding every row until the *last* row stops, so
one reply that never emits `<|im_end|>` makes 31 finished rows ride along to `max_new_tokens`,
and it pays its per-step bookkeeping (stopping criteria, processors, cache-position tracking)
on every step of every batch. Here finished rows leave the batch at once (their KV-cache rows
are dropped with `DynamicCache.batch_select_indices`), the prefill computes logits for the last
position only (`logits_to_keep=1`), and greedy decoding is a plain argmax.

The arithmetic per row is the same as an unpadded single-prompt `generate`: left padding is
masked, and each row's positions count its real tokens only (cumsum of the attention mask), so
greedy outputs are identical to the one-at-a-time loop (test_eval_generation.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen; greedy unless `do_sample`."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature: must be positive when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty: must be positive, got {self.repetition_penalty}")

    def processors(self) -> Any:
        """transformers' own logits processors, so the semantics match `generate` exactly."""
        from transformers.generation.logits_process import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopPLogitsWarper,
        )

        processors = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.do_sample:
            if self.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(self.temperature))
            if self.top_p < 1.0:
                processors.append(TopPLogitsWarper(self.top_p))
        return processors


def left_padded(rows: Sequence[Sequence[int]], *, pad_token_id: int, device: Any) -> tuple[Any, Any]:
    """(input_ids, attention_mask) with every row right-aligned.

    >>> ids, mask = left_padded([[5, 6, 7], [8]], pad_token_id=0, device="cpu")
    >>> ids.tolist(), mask.tolist()
    ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
    """
    import torch

    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, width - len(row):] = torch.as_tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
    return input_ids.to(device), mask.to(device)


def decode_batch(
    model: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, eos_token_id: int, pad_token_id: int,
    sampling: Sampling = Sampling(), generator: Any = None,
) -> list[list[int]]:
    """New token ids per prompt, each ending at its first `eos_token_id` or at `max_new_tokens`.

    Call under `torch.inference_mode()` with the model in eval mode.
    """
    import torch
    from transformers import DynamicCache

    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens: must be positive, got {max_new_tokens}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("prompts: an empty prompt has no last token to continue from")
    device = next(model.parameters()).device
    input_ids, mask = left_padded(prompts, pad_token_id=pad_token_id, device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    processors = sampling.processors()
    seen = input_ids  # what the repetition penalty looks at (prompt + reply so far)

    cache = DynamicCache()
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1, :]
    rows = torch.arange(len(prompts), device=device)  # which prompt each live batch row is
    last_position = positions[:, -1]
    replies: list[list[int]] = [[] for _ in prompts]
    for step in range(max_new_tokens):
        scores = processors(seen, logits.float()) if processors else logits
        if sampling.do_sample:
            next_tokens = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator).squeeze(1)
        else:
            next_tokens = scores.argmax(dim=-1)
        for row, token in zip(rows.tolist(), next_tokens.tolist()):
            replies[row].append(token)
        alive = next_tokens != eos_token_id
        if step == max_new_tokens - 1 or not bool(alive.any()):
            break
        if not bool(alive.all()):  # finished rows leave the batch, cache rows included
            keep = alive.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, next_tokens, mask, last_position, seen = (
                rows[keep], next_tokens[keep], mask[keep], last_position[keep], seen[keep])
        if processors:
            seen = torch.cat([seen, next_tokens[:, None]], dim=1)
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
        last_position = last_position + 1
        logits = model(input_ids=next_tokens[:, None], attention_mask=mask, position_ids=last_position[:, None],
                       cache=cache, use_cache=True).logits[:, -1, :]
    return replies
