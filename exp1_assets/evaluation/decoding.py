"""Left-padded prompts -> new token ids: a lean KV-cache decode loop with continuous batching.

Why not `model.generate` per batch: it keeps decoding every row until the *last* row stops, so
one reply that never emits `<|im_end|>` makes 31 finished rows ride along to `max_new_tokens`,
and it pays its per-step bookkeeping (stopping criteria, processors, cache-position tracking)
on every step of every batch. Here finished rows leave at once (their KV-cache rows are dropped
with `DynamicCache.batch_select_indices`), new prompts join the running batch as rows free up,
the prefill computes logits for the last position only (`logits_to_keep=1`), and greedy
decoding is a plain argmax.

The arithmetic per row is the same as an unpadded single-prompt `generate`: left padding is
masked, and each row's positions count its real tokens only (cumsum of the attention mask), so
greedy outputs are identical to the one-at-a-time loop (test_eval_generation.py)."""

from __future__ import annotations

import collections
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
        input_ids[i, width - len(row):] = torch.as_tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return input_ids.to(device), mask.to(device)


@dataclass
class _Live:
    """The rows decoding right now; row i of every tensor is prompt `rows[i]`."""

    cache: Any  # DynamicCache, (rows, heads, width, head_dim) per layer
    mask: Any  # (rows, width): 1 on real tokens, 0 on left padding
    last_position: Any  # (rows,): position of each row's latest token (real tokens only)
    logits: Any  # (rows, vocab): scores for each row's next token
    seen: Any  # (rows, width) token ids for the repetition penalty, or None
    rows: list[int]


def decode_stream(
    model: Any, prompts: Sequence[Sequence[int]], *, groups: Sequence[Sequence[int]], max_rows: int,
    max_new_tokens: int, eos_token_id: int, pad_token_id: int, sampling: Sampling = Sampling(),
    generator: Any = None, max_cells: int = 1 << 62,
) -> list[list[int]]:
    """New token ids per prompt, each ending at its first `eos_token_id` or at `max_new_tokens`.

    Continuous batching: `groups` (lists of prompt indices) are prefilled one at a time and
    joined to the decoding rows whenever there is room for them under `max_rows`; a row leaves as
    soon as it stops. A decode step has a fixed part (every weight read once, the model's Python)
    and a part that grows with rows x cache width, so fewer steps with fuller batches win: the
    rows that run long no longer keep a half-empty batch going on their own (bench/RESULTS.md:
    494 -> 160 steps for 256 prompts). Joining pads the narrower cache on the left, masked like
    any padding; `max_cells` caps rows x width. Call under `torch.inference_mode()`, model in
    eval mode. With one group of every prompt and `max_rows` = their number it is a plain batch.
    """
    import torch

    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens: must be positive, got {max_new_tokens}")
    if max_rows <= 0 or any(len(group) > max_rows for group in groups):
        raise ValueError(f"max_rows: {max_rows} must be positive and hold every group")
    if any(len(prompts[i]) == 0 for group in groups for i in group):
        raise ValueError("prompts: an empty prompt has no last token to continue from")
    processors = sampling.processors()
    replies: list[list[int]] = [[] for _ in prompts]
    queue = collections.deque(groups)
    live: _Live | None = None
    while queue or live is not None:
        while queue and (live is None or _fits(live, queue[0], prompts, max_rows=max_rows, max_cells=max_cells)):
            fresh = _prefill(model, prompts, queue.popleft(), pad_token_id=pad_token_id, keep_seen=bool(processors))
            live = fresh if live is None else _join(live, fresh, pad_token_id=pad_token_id)

        scores = processors(live.seen, live.logits.float()) if processors else live.logits
        if sampling.do_sample:
            next_tokens = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator).squeeze(1)
        else:
            next_tokens = scores.argmax(dim=-1)
        alive = []
        for row, token in zip(live.rows, next_tokens.tolist()):
            replies[row].append(token)
            alive.append(token != eos_token_id and len(replies[row]) < max_new_tokens)
        if not any(alive):
            live = None
            continue
        if not all(alive):
            keep = torch.tensor([i for i, a in enumerate(alive) if a], device=next_tokens.device)
            _keep_rows(live, keep)
            next_tokens = next_tokens[keep]
        if live.seen is not None:
            live.seen = torch.cat([live.seen, next_tokens[:, None]], dim=1)
        live.mask = torch.cat([live.mask, live.mask.new_ones((len(live.rows), 1))], dim=1)
        live.last_position = live.last_position + 1
        live.logits = model(input_ids=next_tokens[:, None], attention_mask=live.mask,
                            position_ids=live.last_position[:, None], cache=live.cache,
                            use_cache=True).logits[:, -1, :]
    return replies


def _fits(live: _Live, group: Sequence[int], prompts: Sequence[Sequence[int]], *, max_rows: int,
          max_cells: int) -> bool:
    """Room for `group`: rows under `max_rows`, and the joined cache (rows x width) under `max_cells`.

    The cell cap keeps a few long prompts from left-padding every short row to their width:
    attention and cache traffic per step grow with rows x width.
    """
    rows = len(live.rows) + len(group)
    width = max(live.mask.shape[1], max(len(prompts[i]) for i in group))
    return rows <= max_rows and rows * width <= max_cells


def _prefill(model: Any, prompts: Sequence[Sequence[int]], indices: Sequence[int], *, pad_token_id: int,
             keep_seen: bool) -> _Live:
    from transformers import DynamicCache

    device = next(model.parameters()).device
    input_ids, mask = left_padded([prompts[i] for i in indices], pad_token_id=pad_token_id, device=device)
    # Positions count real tokens only: a left-padded row sees the positions it would alone.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1, :]
    return _Live(cache=cache, mask=mask, last_position=positions[:, -1], logits=logits,
                 seen=input_ids if keep_seen else None, rows=list(indices))


def _join(live: _Live, fresh: _Live, *, pad_token_id: int) -> _Live:
    """Stack `fresh` under `live`, left-padding the narrower one's cache, mask and ids."""
    import torch
    import torch.nn.functional as F

    width = max(live.mask.shape[1], fresh.mask.shape[1])

    def widen(t: Any, *, dim_from_end: int, value: int = 0) -> Any:
        missing = width - t.shape[-dim_from_end]
        return F.pad(t, (0, 0) * (dim_from_end - 1) + (missing, 0), value=value) if missing else t

    for mine, theirs in zip(live.cache.layers, fresh.cache.layers):
        mine.keys = torch.cat([widen(mine.keys, dim_from_end=2), widen(theirs.keys, dim_from_end=2)])
        mine.values = torch.cat([widen(mine.values, dim_from_end=2), widen(theirs.values, dim_from_end=2)])
    live.mask = torch.cat([widen(live.mask, dim_from_end=1), widen(fresh.mask, dim_from_end=1)])
    if live.seen is not None:
        live.seen = torch.cat([widen(live.seen, dim_from_end=1, value=pad_token_id),
                               widen(fresh.seen, dim_from_end=1, value=pad_token_id)])
    live.last_position = torch.cat([live.last_position, fresh.last_position])
    live.logits = torch.cat([live.logits, fresh.logits])
    live.rows = live.rows + fresh.rows
    return live


def _keep_rows(live: _Live, keep: Any) -> None:
    """Drop the finished rows, then the left columns that are padding in every remaining row."""
    live.cache.batch_select_indices(keep)
    live.mask, live.last_position, live.logits = live.mask[keep], live.last_position[keep], live.logits[keep]
    live.seen = live.seen[keep] if live.seen is not None else None
    live.rows = [live.rows[i] for i in keep.tolist()]
    first = int(live.mask.any(dim=0).nonzero()[0])
    if first:
        for layer in live.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        live.mask = live.mask[:, first:]
        live.seen = live.seen[:, first:] if live.seen is not None else None
