"""Splits: deterministic, prompt-disjoint, duplicates removed, counts that add up exactly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exp1_assets.data.sources import CONVERSATION_SCHEMA, ingest_conversations
from exp1_assets.data.splits import SPLITS, SplitSpec, prompt_key, split_conversations

FRACTIONS = (0.9, 0.05, 0.05)


@pytest.fixture(scope="module")
def builtin_conversations(tmp_path_factory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("raw")
    result = ingest_conversations(source="builtin", path=None, hub_id="unused", max_samples=None,
                                  seed=0, out_dir=out, builtin_size=3_000)
    return out / "conversations.parquet", result.rows


def conversation(user: str, assistant: str, row: int, system: str | None = None) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"id": f"c{row}", "messages": messages, "source": "test", "category": None,
            "task": None, "answer": None, "row": row}


def write_conversations(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=CONVERSATION_SCHEMA), path)
    return path


def file_digest(path: Path) -> str:
    return hashlib.sha256(str(pq.read_table(path).to_pylist()).encode()).hexdigest()


def test_counts_add_up_and_no_prompt_overlap(builtin_conversations, tmp_path):
    path, rows = builtin_conversations
    result = split_conversations(conversations_path=path, out_dir=tmp_path, spec=SplitSpec(fractions=FRACTIONS, seed=0))
    assert sum(result.counts.values()) == rows and result.duplicates_removed == 0
    assert result.overlap == {"validation_train": 0, "test_train": 0}
    assert 0.85 * rows < result.counts["train"] < 0.95 * rows
    tables = {s: pq.read_table(tmp_path / f"{s}.parquet").to_pylist() for s in SPLITS}
    assert {s: len(t) for s, t in tables.items()} == result.counts
    # Recompute the overlap from the written files, independently of the result.
    keys = {s: {prompt_key(r["messages"]) for r in t} for s, t in tables.items()}
    assert not keys["validation"] & keys["train"] and not keys["test"] & keys["train"]
    stats = result.stats["validation"]
    assert stats["conversations"] == result.counts["validation"]
    assert stats["roles"]["user"] == stats["roles"]["assistant"] >= stats["conversations"]
    assert stats["characters_max"] >= stats["characters_median"] > 0 and stats["turns_mean"] >= 2
    assert (tmp_path / "summary.json").is_file()


def test_deterministic_per_seed(builtin_conversations, tmp_path):
    path, _ = builtin_conversations
    runs = [split_conversations(conversations_path=path, out_dir=tmp_path / name,
                                spec=SplitSpec(fractions=FRACTIONS, seed=seed))
            for name, seed in (("a", 1), ("b", 1), ("c", 2))]
    digests = [file_digest(tmp_path / name / "validation.parquet") for name in "abc"]
    assert (runs[0].counts, runs[0].stats) == (runs[1].counts, runs[1].stats)
    assert digests[0] == digests[1] != digests[2]


def test_duplicates_removed_and_same_prompt_same_split(tmp_path):
    rows = [conversation(f"question {i}", f"answer {i}", i) for i in range(40)]
    rows += [conversation("question 3", "answer 3", 40), conversation("question 7", "answer 7", 41)]
    # Same prompt, different answer or a system prompt: not a duplicate, but the same split.
    rows += [conversation("Question  5 ", "another answer", 42, system="Be nice.")]
    path = write_conversations(tmp_path / "in.parquet", rows)
    result = split_conversations(conversations_path=path, out_dir=tmp_path / "out",
                                 spec=SplitSpec(fractions=(0.5, 0.25, 0.25), seed=0))
    assert result.duplicates_removed == 2 and sum(result.counts.values()) == 41
    where = {r["row"]: s for s in SPLITS
             for r in pq.read_table(tmp_path / "out" / f"{s}.parquet").to_pylist()}
    assert where[5] == where[42] and 40 not in where and 41 not in where


def test_tiny_corpus_still_fills_validation_and_test(tmp_path):
    path = write_conversations(tmp_path / "in.parquet",
                               [conversation(f"q{i}", f"a{i}", i) for i in range(5)])
    for seed in range(5):
        result = split_conversations(conversations_path=path, out_dir=tmp_path / str(seed),
                                     spec=SplitSpec(fractions=FRACTIONS, seed=seed))
        assert result.counts["validation"] >= 1 and result.counts["test"] >= 1
        assert result.counts["train"] >= 1 and sum(result.counts.values()) == 5
        assert result.overlap == {"validation_train": 0, "test_train": 0}
    empty_test = split_conversations(conversations_path=path, out_dir=tmp_path / "no_test",
                                     spec=SplitSpec(fractions=(0.9, 0.1, 0.0), seed=0))
    assert empty_test.counts["test"] == 0


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.9, 0.2, -0.1), (0.0, 0.5, 0.5), (0.5, 0.2, 0.2)])
def test_config_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        SplitSpec(fractions=fractions)


def test_missing_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="nope.parquet"):
        split_conversations(conversations_path=tmp_path / "nope.parquet", out_dir=tmp_path)
