"""Read raw conversations from the Hub, local files or the builtin generator; validate; write.

Everything streams: rows are read one at a time (ijson for JSON arrays, pyarrow batches for
Parquet, line by line for JSONL) and written in ~10k-row Parquet batches, so the real
OpenHermes-2.5 JSON (1.9 GB, ~1M rows) never sits in memory as Python objects. Peak memory is
the duplicate set (16 bytes per kept conversation) plus one batch.

Outputs in `out_dir` (docs/artifacts.md): `conversations.parquet`, `quarantine.jsonl`,
`summary.json`. Every input row is either kept or quarantined with a reason, exactly.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from exp1_assets.data import builtin_corpus
from exp1_assets.data.conversation import (
    LEADING_ASSISTANT,
    DuplicateFilter,
    LeadingAssistant,
    Rejection,
    decode_jsonl_line,
    normalize_row,
)
from exp1_assets.data.roles import Role, RoleMap
from exp1_assets.data.specs import IngestSpec
from exp1_assets.progress import ProgressLog
from exp1_assets.progress import start as start_progress

SOURCES = ("builtin", "local", "hub")
WRITE_BATCH_ROWS = 10_000
READ_BATCH_ROWS = 1_000
RAW_PREVIEW_CHARS = 2_000  # quarantine.jsonl keeps this much of each rejected row
PREVIEW_ROWS = 3

CONVERSATION_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ("source", pa.string()),
    ("category", pa.string()),
    ("task", pa.string()),
    ("answer", pa.string()),
    ("row", pa.int64()),
])


class HubUnavailableError(RuntimeError):
    """The Hub dataset could not be opened (offline, gated, misspelled)."""


@dataclass(frozen=True)
class IngestResult:
    rows: int
    quarantined: int
    quarantine_reasons: dict[str, int]
    source: str
    path: str | None
    data_version: str
    preview: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # the input files that were read
    input_rows: int = 0


# ---------------------------------------------------------------- readers: (file, row, raw)
RawRow = tuple[str, int, Any]  # raw is a decoded row, or a Rejection for undecodable lines


def _read_jsonl(path: str) -> Iterator[RawRow]:
    with open(path, "rb") as handle:
        for index, line in enumerate(handle):
            if line.strip():  # blank lines (often a trailing one) are not rows
                yield path, index, decode_jsonl_line(line)


def _read_json(path: str) -> Iterator[RawRow]:
    import ijson

    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip()
        handle.seek(0)
        if not head.startswith(b"["):
            # Many ".json" dumps are really JSON Lines; read them as such rather than fail.
            yield from _read_jsonl(path)
            return
        index = -1
        try:
            # use_float: plain floats instead of Decimal, so rows stay JSON-serializable.
            for index, raw in enumerate(ijson.items(handle, "item", use_float=True)):
                yield path, index, raw
        except ijson.JSONError as error:
            # A broken array cannot be resynchronized: stop with where it broke.
            raise ValueError(f"{path}: invalid JSON array after row {index}: {error}") from None


def _read_parquet(path: str) -> Iterator[RawRow]:
    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_BATCH_ROWS):
        for raw in batch.to_pylist():
            yield path, index, raw
            index += 1


def _read_saved_dataset(path: str) -> Iterator[RawRow]:
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(path)  # memory-mapped Arrow: iterating does not load it all
    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            raise ValueError(f"{path}: saved DatasetDict has no 'train' split ({list(dataset)})")
        dataset = dataset["train"]
    index = 0
    for batch in dataset.iter(batch_size=READ_BATCH_ROWS):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            yield path, index, dict(zip(columns, values))
            index += 1


def _is_saved_dataset(path: str) -> bool:
    names = set(os.listdir(path))
    return bool(names & {"dataset_info.json", "state.json", "dataset_dict.json"})


def _local_files(path: str | None) -> list[str]:
    """Expand `path` (a file, a save_to_disk folder or a glob) into a sorted file list."""
    if not path:
        raise ValueError("path: source='local' needs a path (a file, a glob or a folder)")
    matches = sorted(glob.glob(os.path.expanduser(path))) if glob.has_magic(path) else [path]
    if not matches or not os.path.exists(matches[0]):
        raise ValueError(f"path: {path!r} does not exist / matches no file")
    for match in matches:
        is_dataset = os.path.isdir(match) and _is_saved_dataset(match)
        if os.path.isdir(match) and not is_dataset:
            raise ValueError(f"path: {match!r} is a directory, not a file or a datasets.save_to_disk folder")
        if not os.access(match, os.R_OK):
            raise ValueError(f"path: {match!r} is not readable (permissions)")
        if not is_dataset and Path(match).suffix.lower() not in LOCAL_READERS:
            raise ValueError(f"path: {match!r} is neither {sorted(LOCAL_READERS)} nor a "
                             f"datasets.save_to_disk folder")
    return matches


LOCAL_READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}


def _read_local(files: list[str]) -> Iterator[RawRow]:
    for path in files:
        reader = _read_saved_dataset if os.path.isdir(path) else LOCAL_READERS[Path(path).suffix.lower()]
        yield from reader(path)


def _read_hub(hub_id: str) -> Iterator[RawRow]:
    try:
        from datasets import load_dataset

        rows = iter(load_dataset(hub_id, split="train", streaming=True))
        first = next(rows, None)  # streaming opens lazily: force the network errors here
    except Exception as error:  # noqa: BLE001 - any failure means "not available", said clearly
        cause = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]
        raise HubUnavailableError(
            f"could not load {hub_id!r} from the Hugging Face Hub ({cause}); use source='local' "
            f"with the downloaded openhermes2_5.json, or source='builtin'") from None
    if first is not None:
        yield hub_id, 0, first
        for index, raw in enumerate(rows, start=1):
            yield hub_id, index, raw


def _read_builtin(size: int, seed: int) -> Iterator[RawRow]:
    for index, raw in enumerate(builtin_corpus.generate_rows(size=size, seed=seed)):
        yield "builtin", index, raw


# ---------------------------------------------------------------- writing
def _raw_preview(raw: Any) -> str:
    if isinstance(raw, Rejection):
        return ""
    return json.dumps(raw, ensure_ascii=False, default=str)[:RAW_PREVIEW_CHARS]


class _ConversationWriter:
    """Parquet in fixed-size batches, plus the running content hash (the data version)."""

    def __init__(self, path: Path) -> None:
        self._writer = pq.ParquetWriter(path, CONVERSATION_SCHEMA)
        self._batch: list[dict[str, Any]] = []
        self._hash = hashlib.sha256()

    def add(self, conversation: dict[str, Any]) -> None:
        self._hash.update(json.dumps(conversation, ensure_ascii=False, sort_keys=True).encode())
        self._batch.append(conversation)
        if len(self._batch) >= WRITE_BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            self._writer.write_table(pa.Table.from_pylist(self._batch, schema=CONVERSATION_SCHEMA))
            self._batch = []

    def close(self) -> str:
        self._flush()
        self._writer.close()
        return self._hash.hexdigest()


_DEFAULTS = IngestSpec()  # the defaults below are IngestSpec's: one place owns them


def ingest_conversations(
    *,
    source: str,
    path: str | None,
    hub_id: str,
    max_samples: int | None,
    seed: int,
    out_dir: Path,
    builtin_size: int = _DEFAULTS.builtin_size,
    max_chars: int = _DEFAULTS.max_chars,
    role_aliases: Mapping[str, Role] | None = _DEFAULTS.role_aliases,
    replace_default_roles: bool = _DEFAULTS.replace_default_roles,
    leading_assistant: LeadingAssistant = _DEFAULTS.leading_assistant,
    progress: ProgressLog | None = None,
) -> IngestResult:
    """Validate every input row into `out_dir`; raise ValueError if nothing usable remains.

    `role_aliases` adds raw role names (case-insensitive) to the defaults in `roles.py`, or
    replaces them with `replace_default_roles=True`; `leading_assistant` keeps assistant turns
    before the first user turn as context ("keep") or quarantines such rows ("quarantine").
    """
    roles = RoleMap(aliases=role_aliases, replace_defaults=replace_default_roles)  # fails before any reading
    if leading_assistant not in LEADING_ASSISTANT:
        raise ValueError(f"leading_assistant: {leading_assistant!r} is not one of {LEADING_ASSISTANT}")
    if source not in SOURCES:
        raise ValueError(f"source: {source!r} is not one of {SOURCES}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples: must be >= 1 or None, got {max_samples}")
    if max_chars < 1:
        raise ValueError(f"max_chars: must be >= 1, got {max_chars}")

    files: list[str] = []
    if source == "builtin":
        size = builtin_size if max_samples is None else min(builtin_size, max_samples)
        raw_rows, default_source = _read_builtin(size, seed), "builtin"
    elif source == "local":
        files = _local_files(path)
        raw_rows, default_source = _read_local(files), "unknown"
    else:
        raw_rows, default_source = _read_hub(hub_id), "unknown"

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = _ConversationWriter(out_dir / "conversations.parquet")
    seen, reasons = DuplicateFilter(), Counter()
    kept, preview, first_bad = 0, [], None
    input_rows = 0
    total = (builtin_size if max_samples is None else min(builtin_size, max_samples)) if source == "builtin" \
        else max_samples  # a file's row count is unknown until it is read
    counter = start_progress(progress, "raw_conversations: reading", total=total, unit="rows")
    try:
        with open(out_dir / "quarantine.jsonl", "w", encoding="utf-8") as quarantine:
            for file, row, raw in raw_rows:
                if max_samples is not None and input_rows >= max_samples:
                    break
                input_rows += 1
                counter.advance()
                result = raw if isinstance(raw, Rejection) else normalize_row(
                    raw, row=row, default_id=f"row-{input_rows - 1}",
                    default_source=default_source, max_chars=max_chars, roles=roles,
                    leading_assistant=leading_assistant)
                if not isinstance(result, Rejection) and seen.is_duplicate(result["messages"]):
                    result = Rejection("duplicate", "same messages as an earlier kept row")
                if isinstance(result, Rejection):
                    reasons[result.reason] += 1
                    first_bad = first_bad or (file, row, result)
                    quarantine.write(json.dumps({"row": row, "file": file, "reason": result.reason,
                                                 "detail": result.detail, "raw": _raw_preview(raw)},
                                                ensure_ascii=False) + "\n")
                    continue
                kept += 1
                writer.add(result)
                if len(preview) < PREVIEW_ROWS:
                    preview.append(result)
    finally:
        data_version = writer.close()
    counter.finish()

    where = path if source == "local" else hub_id if source == "hub" else "builtin"
    if input_rows == 0:
        raise ValueError(f"{where}: no rows to read")
    if kept == 0:
        file, row, rejection = first_bad
        raise ValueError(f"{file}: all {input_rows} rows were quarantined; first bad row "
                         f"{row}: {rejection.reason} ({rejection.detail})")

    result = IngestResult(rows=kept, quarantined=sum(reasons.values()),
                          quarantine_reasons=dict(sorted(reasons.items())), source=source,
                          path=path, data_version=data_version, preview=preview, files=files,
                          input_rows=input_rows)
    summary = asdict(result) | {"hub_id": hub_id if source == "hub" else None,
                                "max_samples": max_samples, "seed": seed, "max_chars": max_chars,
                                "role_aliases": dict(role_aliases) if role_aliases else None,
                                "replace_default_roles": replace_default_roles,
                                "leading_assistant": leading_assistant}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    return result
