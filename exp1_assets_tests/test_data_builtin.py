"""The builtin corpus: deterministic, varied, valid, and answers determined by the prompt."""

from __future__ import annotations

import statistics
from collections import Counter

import pytest

from exp1_assets.data import splits
from exp1_assets.data.builtin_corpus import OPENHERMES_COLUMNS, generate_rows
from exp1_assets.data.conversation import Rejection, normalize_row


@pytest.fixture(scope="module")
def rows():
    return list(generate_rows(size=5_000, seed=0))


def test_same_seed_same_rows_other_seed_other_rows():
    assert list(generate_rows(size=300, seed=1)) == list(generate_rows(size=300, seed=1))
    assert list(generate_rows(size=300, seed=1)) != list(generate_rows(size=300, seed=2))
    # A prefix of a bigger corpus is the smaller corpus: max_samples just truncates.
    assert list(generate_rows(size=50, seed=1)) == list(generate_rows(size=300, seed=1))[:50]


def test_schema_matches_openhermes(rows):
    for row in rows[:200]:
        assert set(row) == set(OPENHERMES_COLUMNS) | {"task", "answer"}
        assert {t["from"] for t in row["conversations"]} <= {"system", "human", "gpt"}
        assert row["source"] == "builtin-synthetic" and row["hash"] is None


def test_variety(rows):
    tasks = Counter(r["task"] for r in rows)
    assert len(tasks) >= 12 and min(tasks.values()) >= 50
    with_system = sum(r["system_prompt"] is not None or r["conversations"][0]["from"] == "system"
                      for r in rows) / len(rows)
    multi_turn = sum(sum(t["from"] == "human" for t in r["conversations"]) > 1 for r in rows) / len(rows)
    assert 0.15 < with_system < 0.25 and 0.10 < multi_turn < 0.20
    lengths = [sum(len(t["value"]) for t in r["conversations"]) for r in rows]
    assert statistics.median(lengths) < 200  # most rows short...
    assert sum(n > 1_000 for n in lengths) >= 50 and max(lengths) < 3_500  # ...with a long tail
    assert sum(r["system_prompt"] is not None for r in rows) > 0  # the top-level column too


def test_every_row_is_valid_and_answer_is_in_the_response(rows):
    for index, row in enumerate(rows):
        normalized = normalize_row(row, row=index)
        assert not isinstance(normalized, Rejection), (index, normalized)
        assert row["answer"] and row["answer"] in row["conversations"][-1]["value"]
        assert normalized["task"] == row["task"] and normalized["answer"] == row["answer"]
        # Built-in rows open with a user turn: the ShareGPT leniency never changes them.
        assert normalize_row(row, row=index, leading_assistant="quarantine") == normalized


def test_answer_is_a_function_of_the_prompt(rows):
    # Learnability: the same prompt (system prompt aside) never has two
    # different responses, so a model can in principle get every held-out prompt right.
    responses: dict[str, set[str]] = {}
    for row in rows:
        messages = normalize_row(row, row=0)["messages"]
        key = splits.prompt_key(messages)
        responses.setdefault(key, set()).add(messages[-1]["content"])
    assert all(len(answers) == 1 for answers in responses.values())
    assert len(responses) > 0.8 * len(rows)  # and few exact repeats


def test_default_size_is_exact():
    # Speed is measured in bench/, not asserted here (shared machines are noisy).
    assert sum(1 for _ in generate_rows(size=20_000, seed=0)) == 20_000
