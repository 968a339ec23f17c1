"""The tokenizer: a byte-level BPE trained on the train split, or a pretrained one adapted to ChatML.

Either way the saved folder is a `PreTrainedTokenizerFast` that `AutoTokenizer.from_pretrained`
loads offline, with the ChatML template and four special tokens: `<|endoftext|>` (bos),
`<|im_start|>`, `<|im_end|>` (eos: generation stops at the end of a turn) and `<|pad|>` (pad,
distinct from eos so that padding never teaches the model to not stop).

Byte-level BPE round-trips any text exactly as long as nothing rewrites it: no normalizer, no
prefix space, a ByteLevel decoder, and `clean_up_tokenization_spaces=False` (which would
otherwise glue " ." and " 's" back together on decode).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow.parquet as pq

from exp1_assets.data.chat import BOS, CHATML_TEMPLATE, IM_END, IM_START, PAD, SPECIAL_TOKENS, render_chatml
from exp1_assets.progress import ProgressLog
from exp1_assets.progress import start as start_progress

# Big enough to never truncate or warn; the packer, not the tokenizer, decides block lengths.
MODEL_MAX_LENGTH = 1_000_000
READ_BATCH_ROWS = 10_000
BYTES_SAMPLE_TEXTS = 2_000
_SPECIAL_PATTERN = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


@dataclass(frozen=True)
class TokenizerInfo:
    """What downstream layers need to know about a saved tokenizer."""

    path: str
    source: str  # "trained-bpe" or the pretrained name/path
    vocab_size: int  # len(tokenizer): the embedding size a model needs
    bos_token_id: int
    eos_token_id: int  # <|im_end|>
    pad_token_id: int
    im_start_id: int
    im_end_id: int
    bytes_per_token: float

    def __post_init__(self) -> None:
        if self.vocab_size <= 0:
            raise ValueError(f"vocab_size: must be > 0, got {self.vocab_size}")
        if self.pad_token_id == self.eos_token_id:
            raise ValueError(f"pad_token_id: equals eos_token_id ({self.eos_token_id}); they must differ")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def iter_conversation_messages(path: Path, *, sample_rows: int | None = None, seed: int = 0) -> Iterator[list]:
    """Stream `messages` from a conversations parquet; a seeded row sample when it has more rows."""
    file = pq.ParquetFile(path)
    if "messages" not in file.schema_arrow.names:
        raise ValueError(f"{path}: no 'messages' column (columns: {file.schema_arrow.names})")
    total = file.metadata.num_rows
    keep = None
    if sample_rows is not None and total > sample_rows:
        keep = np.zeros(total, dtype=bool)
        keep[np.random.default_rng(seed).choice(total, size=sample_rows, replace=False)] = True
    offset = 0
    for batch in file.iter_batches(batch_size=READ_BATCH_ROWS, columns=["messages"]):
        rows = batch.column("messages").to_pylist()
        for index, messages in enumerate(rows):
            if keep is None or keep[offset + index]:
                yield messages
        offset += len(rows)


def bytes_per_token(tokenizer: Any, texts: Sequence[str]) -> float:
    """UTF-8 bytes per token over `texts` (higher = better compression).

    Special tokens count as their text, so ChatML markup is included on both sides.
    """
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    encodings = tokenizer.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)
    n_tokens = sum(len(e.ids) for e in encodings)
    if n_tokens == 0:
        raise ValueError("bytes_per_token: the texts produced no tokens")
    return n_bytes / n_tokens


def roundtrip_ok(tokenizer: Any, texts: Sequence[str]) -> tuple[int, list[str]]:
    """(how many texts satisfy decode(encode(x)) == x, the texts that do not)."""
    failures = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if tokenizer.decode(ids, skip_special_tokens=False) != text:  # the defaults consumers get
            failures.append(text)
    return len(texts) - len(failures), failures


def tokenizer_info(tokenizer: Any, *, path: Path, source: str, sample_texts: Sequence[str]) -> TokenizerInfo:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (IM_START, IM_END)}
    return TokenizerInfo(
        path=str(path), source=source, vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, im_start_id=ids[IM_START], im_end_id=ids[IM_END],
        bytes_per_token=round(bytes_per_token(tokenizer, sample_texts), 4),
    )


def _training_pieces(texts: Iterator[str]) -> Iterator[str]:
    # BPE training does not split out special tokens itself: without this it would learn
    # merges for "<|im_start|>" fragments, wasting vocabulary on markup it never sees split.
    for text in texts:
        yield from (piece for piece in _SPECIAL_PATTERN.split(text) if piece)


def train_bpe_tokenizer(
    *, train_path: Path, out_dir: Path, vocab_size: int, sample_rows: int | None = None,
    min_frequency: int = 2, progress: ProgressLog | None = None,
) -> TokenizerInfo:
    """Train a byte-level BPE on the rendered ChatML of `train_path` and save it to `out_dir`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size: {vocab_size} is below the 256 bytes + {len(SPECIAL_TOKENS)} special tokens")
    if sample_rows is not None and sample_rows <= 0:
        raise ValueError(f"sample_rows: must be > 0 or None, got {sample_rows}")

    sample_texts: list[str] = []  # kept for the bytes-per-token measurement
    rows = pq.ParquetFile(train_path).metadata.num_rows
    counter = start_progress(progress, "tokenizer: counting words", unit="rows",
                             total=rows if sample_rows is None else min(rows, sample_rows))

    def texts() -> Iterator[str]:
        for messages in iter_conversation_messages(train_path, sample_rows=sample_rows):
            text = render_chatml(messages)
            if len(sample_texts) < BYTES_SAMPLE_TEXTS:
                sample_texts.append(text)
            counter.advance()
            yield text
        counter.finish()
        if progress is not None:  # the merges are computed after the last row, in one call
            progress.emit(f"tokenizer: learning {vocab_size:,} merges")

    core = Tokenizer(models.BPE())  # no unk: byte-level covers every input
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet, show_progress=False,
    )
    core.train_from_iterator(_training_pieces(texts()), trainer=trainer)
    if not sample_texts:
        raise ValueError(f"{train_path}: no conversations to train the tokenizer on")

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=IM_END, pad_token=PAD,
        additional_special_tokens=[IM_START], clean_up_tokenization_spaces=False,
        model_max_length=MODEL_MAX_LENGTH,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return tokenizer_info(tokenizer, path=out_dir, source="trained-bpe", sample_texts=sample_texts)


def load_pretrained_tokenizer(*, name_or_path: str, out_dir: Path, sample_texts: Sequence[str] = ()) -> TokenizerInfo:
    """Load a pretrained tokenizer (hub name or local folder), add ChatML + a distinct pad, save."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except OSError as error:
        raise ValueError(
            f"tokenizer {name_or_path!r} could not be loaded ({type(error).__name__}: {error}). Offline or "
            "not found: use the trained BPE tokenizer (tokenizer source 'trained') or a local folder."
        ) from error
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer {name_or_path!r} is not a fast tokenizer: packing needs char offsets")

    # ChatML markers become single, never-split tokens; <|im_end|> is the eos generation stops on.
    tokenizer.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
    tokenizer.eos_token = IM_END
    if tokenizer.bos_token is None:
        tokenizer.add_special_tokens({"bos_token": BOS})
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD})
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.model_max_length = MODEL_MAX_LENGTH
    tokenizer.clean_up_tokenization_spaces = False
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    texts = list(sample_texts) or [render_chatml([{"role": "user", "content": "Hello, world!"},
                                                  {"role": "assistant", "content": "Hi there."}])]
    return tokenizer_info(tokenizer, path=out_dir, source=name_or_path, sample_texts=texts)
