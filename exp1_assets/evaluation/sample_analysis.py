"""Per-category statistics of generated samples: length, structure, endings, repetition.

>>> features("Hello world. Hello world.", repetition_threshold=0.6)["repetitive"]
True
>>> rows = analyze([{"category": "qa", "text": "Paris.", "stopped": True}])
>>> rows[0]["category"], rows[0]["n"], rows[0]["ends_with_punctuation"], rows[0]["stopped"]
('qa', 1, 1.0, 1.0)
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

REPETITION_THRESHOLD = 0.5  # unique words / words below this: the sample loops
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+", re.MULTILINE)
_NUMBER = re.compile(r"\d")


def features(text: str, *, repetition_threshold: float = REPETITION_THRESHOLD) -> dict[str, Any]:
    """What one sample looks like."""
    words = text.split()
    unique_ratio = len({w.lower() for w in words}) / len(words) if words else 1.0
    return {
        "words": len(words),
        "chars": len(text),
        "code_block": "```" in text,
        "bullet_list": bool(_BULLET.search(text)),
        "numbers": bool(_NUMBER.search(text)),
        "ends_with_punctuation": text.rstrip().endswith((".", "!", "?", "```", ":", ")", '"')),
        # A two-word reply cannot loop; judge texts of at least 4 words.
        "repetitive": len(words) >= 4 and unique_ratio < repetition_threshold,
    }


def _stats(values: Sequence[float]) -> tuple[float, float]:
    return (statistics.fmean(values), statistics.pstdev(values)) if values else (0.0, 0.0)


def analyze(
    samples: Sequence[Mapping[str, Any]], *, repetition_threshold: float = REPETITION_THRESHOLD
) -> list[dict[str, Any]]:
    """One row per category (plus "all"): counts, mean/std lengths and shares of each feature.

    `samples` rows need `category`, `text` and `stopped` (hit <|im_end|>).
    """
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for sample in samples:
        groups[str(sample["category"])].append(sample)
        groups["all"].append(sample)
    rows = []
    for category in sorted(groups, key=lambda c: (c == "all", c)):
        group = groups[category]
        feats = [features(s["text"], repetition_threshold=repetition_threshold) for s in group]
        words_mean, words_std = _stats([f["words"] for f in feats])
        chars_mean, chars_std = _stats([f["chars"] for f in feats])
        row: dict[str, Any] = {"category": category, "n": len(group), "words_mean": words_mean,
                               "words_std": words_std, "chars_mean": chars_mean, "chars_std": chars_std}
        for key in ("code_block", "bullet_list", "numbers", "ends_with_punctuation", "repetitive"):
            row[key] = sum(f[key] for f in feats) / len(feats)
        row["stopped"] = sum(bool(s["stopped"]) for s in group) / len(group)
        rows.append(row)
    return rows
