"""Write an OpenHermes-2.5-shaped corpus: one JSON array, the real schema, its null columns.

    python bench/make_openhermes_like.py --rows 1000000 --out bench/out/openhermes_like_1000000.json

Each row has the dataset's 16 columns (`conversations` as {from, value, weight} turns with from in
system|human|gpt; most other columns null, as in the real file). Lengths follow a long-tailed
log-normal like OpenHermes' (mean ~1.5k characters per conversation, median ~0.9k, a tail to tens
of thousands); ~10% carry a system turn, ~8% are multi-turn. Text is English-like: slices of a
pool of random words and punctuation, with a unique row tag so no row is a duplicate. At the
default 1,000,000 rows the file is ~1.9 GB (about 1.9 kB per row including JSON overhead).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

COLUMNS_NULL = ("id", "hash", "model_name", "title", "topic", "views", "language", "custom_instruction",
                "avatarUrl", "idx", "model")
SOURCES = ("airoboros2.2", "CamelAI", "caseus_custom", "EvolInstruct_70k", "glaive-code-assist",
           "metamath", "cot_alpaca_gpt4", "platypus", "GPT-4 Comparison Data", "UnnaturalInstructions")
CATEGORIES = ("orca", "coding", "general", "roleplay", "trivia", "writing", None, None)
SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are an AI assistant. Provide a detailed answer.",
                  "You are a world class trivia AI - provide accurate, succinct responses.")
MEAN_CHARS, SIGMA = 1500.0, 1.0
MAX_CHARS = 60_000
POOL_WORDS = 2_000_000


def word_pool(rng: np.random.Generator) -> str:
    """A few MB of English-looking text: Zipf-distributed words from a made-up lexicon."""
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    weights = np.array([12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4, 2.4, 2.2, 2.0,
                        2.0, 1.9, 1.5, 1.0, 0.8, 0.15, 0.15, 0.1, 0.07])
    lexicon = ["".join(rng.choice(letters, size=rng.integers(1, 11), p=weights / weights.sum()))
               for _ in range(20_000)]
    ranks = np.minimum(rng.zipf(1.2, size=POOL_WORDS) - 1, len(lexicon) - 1)
    words = [lexicon[r] for r in ranks]
    for i in range(0, len(words), 13):  # sentence ends and some code-ish / numeric tokens
        words[i] = words[i] + rng.choice([".", ",", "?", ":", ". \n", " 42", "()", ";\n   "])
    return " ".join(words)


def make_rows(rows: int, *, seed: int):
    rng = np.random.default_rng(seed)
    pool = word_pool(rng)
    mu = np.log(MEAN_CHARS) - SIGMA**2 / 2
    totals = np.clip(rng.lognormal(mu, SIGMA, size=rows), 20, MAX_CHARS).astype(np.int64)
    starts = rng.integers(0, len(pool) - MAX_CHARS, size=(rows, 4))
    user_share = rng.uniform(0.1, 0.5, size=rows)
    has_system = rng.random(rows) < 0.10
    multi_turn = rng.random(rows) < 0.08
    source = rng.integers(0, len(SOURCES), size=rows)
    category = rng.integers(0, len(CATEGORIES), size=rows)
    for i in range(rows):
        total = int(totals[i])
        user_chars = max(8, int(total * user_share[i]))
        gpt_chars = max(8, total - user_chars)
        turns = []
        if has_system[i]:
            turns.append({"from": "system", "value": SYSTEM_PROMPTS[i % len(SYSTEM_PROMPTS)], "weight": None})
        exchanges = 2 if multi_turn[i] else 1
        for k in range(exchanges):
            u, g = int(starts[i, 2 * k]), int(starts[i, 2 * k + 1])
            turns.append({"from": "human", "value": f"[{i}.{k}] " + pool[u:u + user_chars // exchanges],
                          "weight": None})
            turns.append({"from": "gpt", "value": pool[g:g + gpt_chars // exchanges], "weight": None})
        row = {"conversations": turns, "system_prompt": None, "source": SOURCES[source[i]],
               "category": CATEGORIES[category[i]], "skip_prompt_formatting": False if i % 3 else None}
        row.update(dict.fromkeys(COLUMNS_NULL))
        yield row


def write_corpus(*, rows: int, out: Path, seed: int = 0) -> dict:
    """Stream the rows into `out` as one JSON array (atomically); returns size and timing."""
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp")
    chars = 0
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write("[\n")
        for i, row in enumerate(make_rows(rows, seed=seed)):
            chars += sum(len(t["value"]) for t in row["conversations"])
            handle.write(("" if i == 0 else ",\n") + json.dumps(row, ensure_ascii=False))
        handle.write("\n]\n")
    temporary.replace(out)
    return {"rows": rows, "bytes": out.stat().st_size, "mean_chars": chars / rows,
            "seconds": time.perf_counter() - started, "path": str(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = args.out or Path(__file__).resolve().parent / "out" / f"openhermes_like_{args.rows}.json"
    info = write_corpus(rows=args.rows, out=out, seed=args.seed)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
