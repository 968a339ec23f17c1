"""Split conversations into train/validation/test by a seeded hash of their *prompt*.

Hashing the prompt (not the row) sends every copy of a question to the same split, so no
validation or test prompt is ever trained on; the overlap is still counted, as a check.
Exact duplicate conversations are dropped (and counted). Two streaming passes over the input
Parquet: the first decides the splits (and rescues empty validation/test splits on tiny corpora),
the second writes them in batches.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from array import array
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from exp1_assets.data.conversation import messages_digest
from exp1_assets.data.sources import CONVERSATION_SCHEMA, WRITE_BATCH_ROWS
from exp1_assets.data.specs import SplitSpec
from exp1_assets.progress import Progress, ProgressLog
from exp1_assets.progress import start as start_progress

SPLITS = ("train", "validation", "test")
READ_BATCH_ROWS = 10_000


@dataclass(frozen=True)
class SplitResult:
    counts: dict[str, int]
    duplicates_removed: int
    overlap: dict[str, int]  # validation∩train and test∩train prompt keys: must be 0
    stats: dict[str, dict[str, Any]]
    files: list[str]


def prompt_key(messages: list[dict[str, str]]) -> str:
    """A hash of the prompt: the non-system turns before the last assistant turn, normalized.

    System prompts are left out: they are shared boilerplate, and the same question with or
    without one is the same question. Case and runs of whitespace are normalized.

    >>> ask = [{"role": "user", "content": "What is  2+2?"}, {"role": "assistant", "content": "4"}]
    >>> same = [{"role": "system", "content": "Be brief."},
    ...         {"role": "user", "content": "what is 2+2? "}, {"role": "assistant", "content": "Four"}]
    >>> prompt_key(ask) == prompt_key(same)
    True
    >>> prompt_key(ask) == prompt_key([{"role": "user", "content": "What is 3+3?"}])
    False
    """
    last_assistant = max((i for i, m in enumerate(messages) if m["role"] == "assistant"),
                         default=len(messages))
    prompt = [(m["role"], " ".join(m["content"].lower().split()))
              for m in messages[:last_assistant] if m["role"] != "system"]
    canonical = json.dumps(prompt, ensure_ascii=False)
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).hexdigest()


def _unit_interval(key: str, seed: int) -> float:
    """A seeded, uniform-looking position in [0, 1) for a prompt key."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _bucket(position: float, fractions: tuple[float, float, float]) -> str:
    if position < fractions[0]:
        return "train"
    return "validation" if position < fractions[0] + fractions[1] else "test"


def _read_rows(path: Path, counter: Progress) -> Iterator[dict[str, Any]]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_BATCH_ROWS):
        yield from batch.to_pylist()
        counter.advance(batch.num_rows)
    counter.finish()


def _plan(path: Path, config: SplitSpec, *, counter: Progress) -> dict[str, str]:
    """First pass: overrides {prompt key -> split} that give empty non-zero splits one prompt.

    Hashing alone can leave validation/test empty on tiny corpora; then we move the train
    prompts lying closest to the validation/test interval (highest positions), deterministically.
    """
    seen, counts = set(), Counter()
    top_train: dict[str, list] = {}  # key -> [position, rows]; the few highest train positions
    for row in _read_rows(path, counter):
        digest = messages_digest(row["messages"])
        if digest in seen:
            continue
        seen.add(digest)
        key = prompt_key(row["messages"])
        position = _unit_interval(key, config.seed)
        split = _bucket(position, config.fractions)
        counts[split] += 1
        if split != "train":
            continue
        # A key's position never changes and the kept minimum only rises, so an evicted key
        # never returns: the row counts of the kept keys are exact.
        top_train.setdefault(key, [position, 0])[1] += 1
        if len(top_train) > 3:
            del top_train[min(top_train, key=lambda k: top_train[k][0])]
    overrides: dict[str, str] = {}
    train_rows = counts["train"]
    candidates = sorted(top_train, key=lambda k: top_train[k][0], reverse=True)
    for split, fraction in zip(SPLITS[1:], config.fractions[1:]):
        if fraction > 0 and counts[split] == 0 and candidates:
            key = candidates.pop(0)
            if train_rows - top_train[key][1] >= 1:  # train must keep at least one row
                overrides[key] = split
                train_rows -= top_train[key][1]
    return overrides


class _SplitStats:
    """Token-free statistics of one split: characters per conversation, turns, roles."""

    def __init__(self) -> None:
        self.characters, self.turns, self.roles = array("q"), array("l"), Counter()

    def add(self, messages: list[dict[str, str]]) -> None:
        self.characters.append(sum(len(m["content"]) for m in messages))
        self.turns.append(len(messages))
        self.roles.update(m["role"] for m in messages)

    def summary(self) -> dict[str, Any]:
        if not self.characters:
            return {"conversations": 0, "roles": {}}
        return {
            "conversations": len(self.characters),
            "characters_mean": round(statistics.fmean(self.characters), 2),
            "characters_median": float(statistics.median(self.characters)),
            "characters_max": max(self.characters),
            "turns_mean": round(statistics.fmean(self.turns), 3),
            "roles": dict(sorted(self.roles.items())),
        }


def split_conversations(
    *,
    conversations_path: Path,
    out_dir: Path,
    spec: SplitSpec = SplitSpec(),
    progress: ProgressLog | None = None,
) -> SplitResult:
    """Write train/validation/test.parquet and summary.json into `out_dir`."""
    conversations_path, out_dir = Path(conversations_path), Path(out_dir)
    if not conversations_path.is_file():
        raise ValueError(f"conversations_path: {conversations_path} is not a file")
    total = pq.ParquetFile(conversations_path).metadata.num_rows
    overrides = _plan(conversations_path, spec,
                      counter=start_progress(progress, "conversation_splits: planning", total=total, unit="rows"))

    out_dir.mkdir(parents=True, exist_ok=True)
    writers = {s: pq.ParquetWriter(out_dir / f"{s}.parquet", CONVERSATION_SCHEMA) for s in SPLITS}
    batches: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    keys: dict[str, set[str]] = {s: set() for s in SPLITS}
    stats = {s: _SplitStats() for s in SPLITS}
    seen, duplicates = set(), 0

    def flush(split: str) -> None:
        if batches[split]:
            writers[split].write_table(pa.Table.from_pylist(batches[split], schema=CONVERSATION_SCHEMA))
            batches[split] = []

    try:
        writing = start_progress(progress, "conversation_splits: writing", total=total, unit="rows")
        for row in _read_rows(conversations_path, writing):
            digest = messages_digest(row["messages"])
            if digest in seen:
                duplicates += 1
                continue
            seen.add(digest)
            key = prompt_key(row["messages"])
            split = overrides.get(key) or _bucket(_unit_interval(key, spec.seed), spec.fractions)
            keys[split].add(key)
            stats[split].add(row["messages"])
            batches[split].append(row)
            if len(batches[split]) >= WRITE_BATCH_ROWS:
                flush(split)
    finally:
        for split in SPLITS:
            flush(split)
            writers[split].close()

    result = SplitResult(
        counts={s: len(stats[s].characters) for s in SPLITS},
        duplicates_removed=duplicates,
        overlap={f"{s}_train": len(keys[s] & keys["train"]) for s in SPLITS[1:]},
        stats={s: stats[s].summary() for s in SPLITS},
        files=[str(out_dir / f"{s}.parquet") for s in SPLITS],
    )
    summary = asdict(result) | {"fractions": list(spec.fractions), "seed": spec.seed,
                                "input": str(conversations_path)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return result
