"""Conversations -> token ids + loss labels -> fixed-length packed blocks (Arrow IPC stream).

Why pack: padding chat data to the longest row wastes most of the compute. Conversations are
placed into blocks of exactly `max_length` tokens by best-fit-decreasing; `position_ids` restart
at 0 for each conversation, which with `attention_mask=None` makes transformers build a
block-diagonal causal mask, so packed conversations never attend to each other.

Labels: a token is trained (label = its id) when its character span lies inside an assistant
span of the rendered ChatML (content + `<|im_end|>`, see chat.py), else -100. The first token of
every packed document is never a target: the model's shifted loss would predict it from the
*previous* document in the block.
"""

from __future__ import annotations

import functools
import itertools

import bisect
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence, get_args

import numpy as np

from exp1_assets.data.blocks import BLOCK_DTYPE, IGNORE_INDEX, arrow_schema, record_batch
from exp1_assets.data.chat import render_with_spans
from exp1_assets.data.specs import PackSpec, TrainOn
from exp1_assets.progress import ProgressLog
from exp1_assets.progress import start as start_progress

TRAIN_ON: tuple[str, ...] = get_args(TrainOn)
_DEFAULTS = PackSpec()  # the packing defaults below are PackSpec's: one place owns them
# Conversations per encode_batch call: plenty to keep the Rust thread pool busy, while the
# Encoding objects (offsets, token strings: ~150 bytes/token) never hold a whole chunk.
ENCODE_BATCH = 1_000
Document = tuple[np.ndarray, np.ndarray]  # (input ids, labels), both int32


def labels_from_spans(ids: np.ndarray, offsets: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Label = id where the token's [start, end) char span lies inside one of `spans`, else -100.

    >>> ids = np.array([7, 8, 9, 10], dtype=np.int32)
    >>> offsets = np.array([[0, 3], [3, 5], [5, 8], [8, 9]])
    >>> labels_from_spans(ids, offsets, [(3, 8)]).tolist()
    [-100, 8, 9, -100]
    """
    labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int32)
    if not spans or len(ids) == 0:
        return labels
    span_starts = np.fromiter((s for s, _ in spans), dtype=np.int64, count=len(spans))
    span_ends = np.fromiter((e for _, e in spans), dtype=np.int64, count=len(spans))
    # The last span starting at or before each token's start is the only one that can contain it.
    k = np.searchsorted(span_starts, offsets[:, 0], side="right") - 1
    inside = (k >= 0) & (offsets[:, 1] <= span_ends[np.maximum(k, 0)])
    labels[inside] = ids[inside]
    return labels


def tokenize_conversations(
    tokenizer: Any, messages_batch: Sequence[Sequence[dict]], *, train_on: TrainOn = _DEFAULTS.train_on,
    train_on_leading_assistant: bool = _DEFAULTS.train_on_leading_assistant,
) -> list[Document]:
    """Render each conversation as ChatML, encode them in batched calls, label them.

    Assistant turns before the first user turn are context (label -100) unless
    `train_on_leading_assistant` (see chat.py); `train_on="all"` trains every token regardless.

    Each whole conversation is encoded once; `encode_batch` runs in parallel inside the Rust
    tokenizer (without the GIL) and keeps character offsets, so labels come from the assistant
    spans' edges without re-tokenizing pieces or looping over tokens in Python. The next batch
    is encoded in a helper thread while this one is labelled, so the Python work overlaps the
    Rust work instead of following it.
    """
    from concurrent.futures import ThreadPoolExecutor

    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on: {train_on!r} is not one of {TRAIN_ON}")
    batches = [messages_batch[start:start + ENCODE_BATCH] for start in range(0, len(messages_batch), ENCODE_BATCH)]
    documents: list[Document] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode") as pool:
        encode = functools.partial(_render_and_encode, tokenizer, train_on_leading_assistant=train_on_leading_assistant)
        pending = pool.submit(encode, batches[0]) if batches else None
        for index in range(len(batches)):
            spans, encodings = pending.result()
            if index + 1 < len(batches):
                pending = pool.submit(encode, batches[index + 1])
            documents.extend(_label(encodings, spans, train_on=train_on))
    return documents


def _render_and_encode(
    tokenizer: Any, messages_batch: Sequence[Sequence[dict]], *, train_on_leading_assistant: bool
) -> tuple[list, list]:
    rendered = [render_with_spans(messages, train_on_leading_assistant=train_on_leading_assistant)
                for messages in messages_batch]
    encodings = tokenizer.backend_tokenizer.encode_batch([text for text, _ in rendered], add_special_tokens=False)
    return [spans for _, spans in rendered], encodings


def _label(encodings: Sequence[Any], spans_batch: Sequence[Sequence[tuple[int, int]]], *, train_on: str) -> list[Document]:
    documents = []
    for spans, encoding in zip(spans_batch, encodings):
        ids = np.asarray(encoding.ids, dtype=np.int32)
        if train_on == "all":
            labels = ids.copy()
        else:
            labels = _labels_at_span_edges(encoding, ids, spans)
            if labels is None:  # a span edge maps to no token: the per-token rule decides
                offsets = np.fromiter(itertools.chain.from_iterable(encoding.offsets), dtype=np.int64,
                                      count=2 * len(ids)).reshape(-1, 2)
                labels = labels_from_spans(ids, offsets, spans)
        labels[:1] = IGNORE_INDEX
        documents.append((ids, labels))
    return documents


def _labels_at_span_edges(encoding: Any, ids: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray | None:
    """The same labels as `labels_from_spans`, from a few lookups per span instead of per token.

    Tokens are contiguous and in text order, so the tokens lying inside [start, end) are one run:
    from the token holding `start` (or the next, if it begins before `start`) to the token holding
    `end - 1` (or the previous, if it runs past `end`; plus any later token that still fits, as
    when byte-level BPE splits one character into several tokens). Materializing every token's
    offsets as Python tuples was the top line of the packing profile (bench/RESULTS.md).
    """
    labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int32)
    for start, end in spans:
        if end <= start:
            continue
        first, last = encoding.char_to_token(start), encoding.char_to_token(end - 1)
        if first is None or last is None:
            return None
        if encoding.token_to_chars(first)[0] < start:
            first += 1
        if encoding.token_to_chars(last)[1] > end:
            last -= 1
        while last + 1 < len(ids) and start <= encoding.token_to_chars(last + 1)[0] and \
                encoding.token_to_chars(last + 1)[1] <= end:
            last += 1
        if first <= last:
            labels[first:last + 1] = ids[first:last + 1]
    return labels


def split_overflow(ids: np.ndarray, labels: np.ndarray, *, max_length: int) -> list[Document]:
    """Cut a too-long document into consecutive chunks of at most `max_length` (no token lost).

    Each chunk is packed as its own document (positions restart), so its first label is masked.

    >>> chunks = split_overflow(np.arange(5, dtype=np.int32), np.arange(5, dtype=np.int32), max_length=2)
    >>> [(c[0].tolist(), c[1].tolist()) for c in chunks]
    [([0, 1], [-100, 1]), ([2, 3], [-100, 3]), ([4], [-100])]
    """
    if len(ids) <= max_length:
        return [(ids, labels)]
    chunks = []
    for start in range(0, len(ids), max_length):
        chunk_labels = labels[start:start + max_length].copy()
        chunk_labels[0] = IGNORE_INDEX
        chunks.append((ids[start:start + max_length], chunk_labels))
    return chunks


def pack_best_fit_decreasing(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Document indices per block: longest first, each into the fullest block it still fits.

    Open blocks are kept by remaining capacity: a sorted list of the distinct capacities plus a
    stack of blocks per capacity, so finding the best fit is one bisect (O(log max_length)).

    >>> pack_best_fit_decreasing([5, 3, 4, 2, 6], 8)
    [[4, 3], [0, 1], [2]]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and (lengths.min() <= 0 or lengths.max() > max_length):
        raise ValueError(f"lengths: every length must be in 1..max_length={max_length}")
    order = np.argsort(-lengths, kind="stable")
    blocks: list[list[int]] = []
    capacities: list[int] = []  # sorted, distinct, each with a non-empty stack below
    blocks_by_capacity: dict[int, list[int]] = {}
    for index in order.tolist():
        length = int(lengths[index])
        position = bisect.bisect_left(capacities, length)
        if position < len(capacities):  # best fit: the smallest capacity that still holds it
            capacity = capacities[position]
            block = blocks_by_capacity[capacity].pop()
            if not blocks_by_capacity[capacity]:
                del blocks_by_capacity[capacity]
                capacities.pop(position)
        else:
            capacity, block = max_length, len(blocks)
            blocks.append([])
        blocks[block].append(index)
        remaining = capacity - length
        if remaining > 0:
            if remaining not in blocks_by_capacity:
                bisect.insort(capacities, remaining)
                blocks_by_capacity[remaining] = []
            blocks_by_capacity[remaining].append(block)
    return blocks


def build_blocks(
    documents: Sequence[Document], blocks: Sequence[Sequence[int]], *, max_length: int, pad_token_id: int
) -> dict[str, np.ndarray]:
    """Fixed-length arrays (n_blocks, max_length) of the block contract (blocks.py).

    Filler at the end of a block is pad with label -100 and its own position run from 0.

    >>> docs = [(np.array([5, 6, 7], np.int32), np.array([-100, 6, 7], np.int32)),
    ...         (np.array([8, 9], np.int32), np.array([-100, 9], np.int32))]
    >>> out = build_blocks(docs, [[0, 1]], max_length=7, pad_token_id=0)
    >>> out["input_ids"].tolist(), out["labels"].tolist(), out["position_ids"].tolist()
    ([[5, 6, 7, 8, 9, 0, 0]], [[-100, 6, 7, -100, 9, -100, -100]], [[0, 1, 2, 0, 1, 0, 1]])
    """
    shape = (len(blocks), max_length)
    input_ids = np.full(shape, pad_token_id, dtype=BLOCK_DTYPE)
    labels = np.full(shape, IGNORE_INDEX, dtype=BLOCK_DTYPE)
    position_ids = np.zeros(shape, dtype=BLOCK_DTYPE)
    positions = np.arange(max_length, dtype=BLOCK_DTYPE)
    for row, members in enumerate(blocks):
        cursor = 0
        for index in members:
            ids, doc_labels = documents[index]
            end = cursor + len(ids)
            if end > max_length:
                raise ValueError(f"blocks[{row}]: documents add up to more than max_length={max_length}")
            input_ids[row, cursor:end] = ids
            labels[row, cursor:end] = doc_labels
            position_ids[row, cursor:end] = positions[:len(ids)]
            cursor = end
        position_ids[row, cursor:] = positions[:max_length - cursor]
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


@dataclass(frozen=True)
class PackStats:
    """Counts for one packed split; `lengths` (tokens per conversation) stays out of to_dict()."""

    split: str
    max_length: int
    conversations: int
    conversations_without_loss: int  # conversations with no trained token at all
    blocks: int
    tokens: int  # real (non-filler) tokens in the blocks
    loss_tokens: int
    loss_fraction: float  # loss_tokens / (blocks * max_length)
    padding_fraction: float  # filler / (blocks * max_length)
    truncated_conversations: int  # longer than max_length: split into chunks
    overflow_tokens: int  # tokens beyond the first max_length of those conversations
    pieces_without_loss: int  # chunks (or whole conversations) with no trained token: not packed
    tokens_without_loss: int  # their tokens: compute that would carry no gradient
    length_summary: dict[str, Any]
    lengths: np.ndarray = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "lengths"}


def configure_tokenizer_threads(num_proc: int | None) -> None:
    """Let the Rust tokenizer batch in parallel; RAYON_NUM_THREADS only counts before its first use."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    if num_proc is not None:
        if num_proc <= 0:
            raise ValueError(f"num_proc: must be > 0, got {num_proc}")
        os.environ["RAYON_NUM_THREADS"] = str(num_proc)


def pack_split(
    *, tokenizer: Any, conversations_path: Path, out_path: Path, max_length: int,
    train_on: TrainOn = _DEFAULTS.train_on, chunk_rows: int = _DEFAULTS.chunk_rows, num_proc: int | None = None,
    train_on_leading_assistant: bool = _DEFAULTS.train_on_leading_assistant, progress: ProgressLog | None = None,
) -> PackStats:
    """Tokenize and pack one conversations parquet into `out_path` (Arrow IPC stream), chunk by chunk.

    Packing per chunk of rows bounds memory (the whole corpus is never held) at the cost of a
    little extra filler at each chunk's last blocks.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from exp1_assets.data.length_stats import length_analysis

    if max_length < 2:
        raise ValueError(f"max_length: must be >= 2, got {max_length}")
    if chunk_rows <= 0:
        raise ValueError(f"chunk_rows: must be > 0, got {chunk_rows}")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError(f"tokenizer: pad_token_id {tokenizer.pad_token_id} must exist and differ from eos")
    configure_tokenizer_threads(num_proc)
    parquet = pq.ParquetFile(conversations_path)
    if "messages" not in parquet.schema_arrow.names:
        raise ValueError(f"{conversations_path}: no 'messages' column (columns: {parquet.schema_arrow.names})")

    schema = arrow_schema()
    counts = dict(conversations=0, conversations_without_loss=0, blocks=0, tokens=0, loss_tokens=0,
                  truncated_conversations=0, overflow_tokens=0, pieces_without_loss=0, tokens_without_loss=0)
    lengths: list[np.ndarray] = []
    out_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_path.with_name(out_path.name + ".tmp")
    counter = start_progress(progress, f"packed_dataset: {out_path.stem}", total=parquet.metadata.num_rows,
                             unit="conversations")
    try:
        with pa.OSFile(str(temporary), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for batch in parquet.iter_batches(batch_size=chunk_rows, columns=["messages"]):
                documents = tokenize_conversations(tokenizer, batch.column("messages").to_pylist(), train_on=train_on,
                                                   train_on_leading_assistant=train_on_leading_assistant)
                chunk_lengths = np.fromiter((len(ids) for ids, _ in documents), dtype=np.int64, count=len(documents))
                lengths.append(chunk_lengths)
                counts["conversations"] += len(documents)
                counts["conversations_without_loss"] += sum(int((lab == IGNORE_INDEX).all()) for _, lab in documents)
                too_long = chunk_lengths > max_length
                counts["truncated_conversations"] += int(too_long.sum())
                counts["overflow_tokens"] += int((chunk_lengths[too_long] - max_length).sum())

                pieces = [piece for ids, lab in documents for piece in split_overflow(ids, lab, max_length=max_length)]
                # A piece with no target (e.g. the prompt-only chunk of an overflowing conversation)
                # would cost a block's compute for zero gradient: 7.4% of tiny's train blocks at
                # max_length 256 (bench/RESULTS.md). Counted, not packed.
                lossless = [len(ids) for ids, lab in pieces if (lab == IGNORE_INDEX).all()]
                counts["pieces_without_loss"] += len(lossless)
                counts["tokens_without_loss"] += sum(lossless)
                pieces = [(ids, lab) for ids, lab in pieces if (lab != IGNORE_INDEX).any()]
                blocks = pack_best_fit_decreasing([len(ids) for ids, _ in pieces], max_length)
                arrays = build_blocks(pieces, blocks, max_length=max_length, pad_token_id=tokenizer.pad_token_id)
                counts["blocks"] += len(blocks)
                counts["tokens"] += sum(len(ids) for ids, _ in pieces)
                counts["loss_tokens"] += int((arrays["labels"] != IGNORE_INDEX).sum())
                if blocks:
                    writer.write_batch(record_batch(arrays))
                counter.advance(batch.num_rows)
        counter.finish()
        if counts["loss_tokens"] == 0:
            raise ValueError(
                f"split {out_path.stem} has no loss-carrying tokens: {counts['conversations']} conversations in "
                f"{conversations_path}, train_on={train_on!r} (no assistant turns, or all masked)"
            )
        os.replace(temporary, out_path)
    finally:
        temporary.unlink(missing_ok=True)

    capacity = max(counts["blocks"] * max_length, 1)
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    return PackStats(
        split=out_path.stem, max_length=max_length, **counts,
        loss_fraction=round(counts["loss_tokens"] / capacity, 6),
        padding_fraction=round(1 - counts["tokens"] / capacity, 6),
        length_summary=length_analysis(all_lengths), lengths=all_lengths,
    )


def pack_dataset(
    *, tokenizer_dir: Path, splits_dir: Path, out_dir: Path, max_length: int, train_on: TrainOn = _DEFAULTS.train_on,
    chunk_rows: int = _DEFAULTS.chunk_rows, train_on_leading_assistant: bool = _DEFAULTS.train_on_leading_assistant,
    progress: ProgressLog | None = None,
) -> dict[str, PackStats]:
    """Pack train and validation into `out_dir` (train.arrow, validation.arrow, meta.json, histogram)."""
    from transformers import AutoTokenizer

    from exp1_assets.data.length_stats import histogram_png

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    stats = {}
    for split in ("train", "validation"):
        stats[split] = pack_split(
            tokenizer=tokenizer, conversations_path=splits_dir / f"{split}.parquet",
            out_path=out_dir / f"{split}.arrow", max_length=max_length, train_on=train_on, chunk_rows=chunk_rows,
            train_on_leading_assistant=train_on_leading_assistant, progress=progress,
        )
    histogram_png(stats["train"].lengths, path=out_dir / "length_histogram.png",
                  title=f"train conversations: tokens per conversation (max_length {max_length})")
    meta = {
        "max_length": max_length, "pad_token_id": tokenizer.pad_token_id, "vocab_size": len(tokenizer),
        "train_on": train_on, "train_on_leading_assistant": train_on_leading_assistant,
        "tokenizer_dir": str(tokenizer_dir),
        "splits": {split: s.to_dict() for split, s in stats.items()},
        "length_analysis": {split: s.length_summary for split, s in stats.items()},
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    return stats
