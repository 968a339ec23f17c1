"""Prompt sets: the default sample prompts (by category) and the few-shot probe set.

A user's own prompts come as inline rows or a JSONL file of `{"category": ..., "prompt": ...}`.

>>> len(load_prompts(inline=None, path=None)) == len(DEFAULT_PROMPTS)
True
>>> load_prompts(inline=[{"category": "qa", "prompt": "Why?"}], path=None)
[{'category': 'qa', 'prompt': 'Why?'}]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CATEGORIES = ("instruction", "creative", "qa", "reasoning", "summarization", "code", "math")

_BY_CATEGORY: dict[str, tuple[str, ...]] = {
    "instruction": (
        "Give three tips for staying focused while studying.",
        "Explain how to make a cup of tea, step by step.",
        "List four things to pack for a weekend hiking trip.",
    ),
    "creative": (
        "Write a short story about a fox who wants to learn to fly.",
        "Write a four-line poem about the sea at night.",
        "Describe an imaginary city built inside a giant tree.",
    ),
    "qa": (
        "What is the capital of France?",
        "Why is the sky blue?",
        "How many legs does a spider have?",
    ),
    "reasoning": (
        "If all bloops are razzies and all razzies are lazzies, are all bloops lazzies? Explain.",
        "Is 743 an even or an odd number? Explain why.",
        "Tom is taller than Ann, and Ann is taller than Joe. Who is the shortest?",
    ),
    "summarization": (
        "Summarize in one sentence: The library opened a new reading room on Monday. It has forty "
        "seats, large windows and a small cafe, and it stays open until ten in the evening.",
        "Summarize in one sentence: Mara, an engineer from Modri, opened a bicycle shop in 1961. "
        "The shop grew quickly and later employed twenty people.",
        "Give a one-line summary: Rain fell for three days, the river rose, and the town moved its "
        "market to the hill until the water went down.",
    ),
    "code": (
        "Write a Python function that returns the sum of a list of numbers.",
        "Write a Python function that reverses a string.",
        "Write a Python function that checks whether a number is even.",
    ),
    "math": (
        "What is 23 + 16?",
        "Calculate 7 * 8.",
        "Sort these numbers in ascending order: 42, 7, 19, 3.",
    ),
}
DEFAULT_PROMPTS: tuple[dict[str, str], ...] = tuple(
    {"category": c, "prompt": p} for c in CATEGORIES for p in _BY_CATEGORY[c]
)

# Few-shot probes: short prompts with one unambiguous answer (checked by whole-word containment).
PROBES: tuple[dict[str, str], ...] = (
    {"category": "qa", "prompt": "What is the capital of France?", "answer": "Paris"},
    {"category": "qa", "prompt": "How many days are in a week?", "answer": "7"},
    {"category": "arithmetic", "prompt": "What is 2 + 3?", "answer": "5"},
    {"category": "arithmetic", "prompt": "What is 12 + 7?", "answer": "19"},
    {"category": "arithmetic", "prompt": "Calculate 6 * 7.", "answer": "42"},
    {"category": "arithmetic", "prompt": "What is 50 - 8?", "answer": "42"},
    {"category": "completion", "prompt": "Complete the sequence: 2, 4, 6, 8, ...", "answer": "10"},
    {"category": "completion", "prompt": "Reverse the word 'cat'.", "answer": "tac"},
    {"category": "completion", "prompt": "Which is larger, 17 or 71?", "answer": "71"},
)


# Worked examples shown before every probe, as earlier turns of the same chat (few-shot): the
# probe then measures whether the model picks up the answer format from context.
FEW_SHOT: dict[str, tuple[tuple[str, str], ...]] = {
    "qa": (("What is the capital of Italy?", "Rome"), ("How many legs does a spider have?", "8")),
    "arithmetic": (("What is 4 + 4?", "8"), ("What is 9 - 3?", "6")),
    "completion": (("Complete the sequence: 1, 2, 3, ...", "4"), ("Reverse the word 'dog'.", "god")),
}


def few_shot_messages(probe: dict[str, str]) -> list[dict[str, str]]:
    """The probe as a chat: its category's worked examples, then the question.

    >>> [m["role"] for m in few_shot_messages(PROBES[2])]
    ['user', 'assistant', 'user', 'assistant', 'user']
    """
    messages = []
    for question, answer in FEW_SHOT.get(probe["category"], ()):
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages + [{"role": "user", "content": probe["prompt"]}]


def _validate_row(row: Any, *, where: str) -> dict[str, str]:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object with 'category' and 'prompt', got {type(row).__name__}")
    for key in ("category", "prompt"):
        value = row.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
    return {"category": row["category"].strip(), "prompt": row["prompt"]}


def load_prompts(*, inline: Sequence[dict] | None, path: str | None) -> list[dict[str, str]]:
    """Inline rows, else a JSONL file, else the defaults. Bad rows raise ValueError with a location."""
    if inline is not None and path:
        raise ValueError("prompts: give inline prompts or a prompts path, not both")
    if inline is not None:
        rows = [_validate_row(r, where=f"inline prompt #{i}") for i, r in enumerate(inline)]
    elif path:
        rows = []
        for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: invalid JSON ({exc.msg})") from None
            rows.append(_validate_row(row, where=where))
    else:
        rows = [dict(r) for r in DEFAULT_PROMPTS]
    if not rows:
        raise ValueError(f"prompts: no prompts in {path or 'the inline list'}")
    return rows
