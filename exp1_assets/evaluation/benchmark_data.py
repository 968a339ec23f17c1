"""The package's own offline benchmark tasks, built from the built-in corpus's held-out test split.

lm-evaluation-harness reads a local task from a YAML file (`dataset_path: json`,
`dataset_kwargs.data_files`). The YAMLs ship with the package (`benchmark_tasks/`, one per task,
named after it); the docs are built at run time from `conversation_splits/test.parquet`, so
they are always held out from training and follow whatever corpus the run used:

- `exp1_answer_choice` (multiple choice, log-likelihood): a single-turn test conversation whose
  reply contains its exact answer; the choices are that reply and copies with the answer
  swapped for other rows' answers of the same family and kind (number or word), so a choice
  cannot be told apart by its type alone.
- `exp1_arithmetic_exact` (generate until, exact match): the arithmetic prompts; the answer is
  the number after the reply's first "=" (the YAML's regex filter).

Only single-turn rows (an optional system prompt, one user turn, the reply) are used: an lm-eval
doc has one user turn, and the system prompt travels as the doc's `description`.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).resolve().parent / "benchmark_tasks"
ANSWER_CHOICE, ARITHMETIC_EXACT = "exp1_answer_choice", "exp1_arithmetic_exact"
BUILTIN_TASKS = (ANSWER_CHOICE, ARITHMETIC_EXACT)
# Families whose reply states the exact answer once, as a whole word (builtin_corpus.FAMILIES).
CHOICE_FAMILIES = ("arithmetic", "comparison", "unit_conversion", "count_items", "knowledge", "yes_no",
                   "reverse_word", "spell_word", "sort_list")
DISTRACTORS = 3  # wrong choices per doc, fewer when the family has fewer other answers


def single_turn(messages: Sequence[Mapping[str, str]]) -> tuple[str, str, str] | None:
    """(system, user, reply) of a one-exchange conversation ("" without a system prompt), else None.

    >>> single_turn([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}])
    ('', '2+2?', '4')
    >>> single_turn([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 2) is None
    True
    """
    roles = [m["role"] for m in messages]
    if roles == ["system", "user", "assistant"]:
        return messages[0]["content"], messages[1]["content"], messages[2]["content"]
    if roles == ["user", "assistant"]:
        return "", messages[0]["content"], messages[1]["content"]
    return None


def swap_answer(reply: str, answer: str, replacement: str) -> str | None:
    """`reply` with the last whole-word occurrence of `answer` replaced; None when there is none.

    >>> swap_answer("12 + 7 = 19.", "19", "23")
    '12 + 7 = 23.'
    >>> swap_answer("45 is larger than 4.", "45", "61")
    '61 is larger than 4.'
    >>> swap_answer("The word 'ab' reversed is 'ba'.", "b", "x") is None
    True
    """
    matches = list(re.finditer(rf"(?<!\w){re.escape(answer)}(?!\w)", reply))
    if not matches:
        return None
    last = matches[-1]
    return reply[:last.start()] + replacement + reply[last.end():]


def answer_kind(answer: str) -> str:
    """Whether an answer is a whole number or anything else (distractors keep the kind).

    >>> [answer_kind(a) for a in ("42", "-3", "Velish", "3, 5, 9")]
    ['number', 'number', 'word', 'word']
    """
    return "number" if re.fullmatch(r"-?\d+", answer) else "word"


def _eligible(rows: Iterable[Mapping[str, Any]], families: Sequence[str]) -> list[dict[str, Any]]:
    found = []
    for index, row in enumerate(rows):
        turn = single_turn(row.get("messages") or [])
        if row.get("task") in families and row.get("answer") and turn is not None:
            system, question, reply = turn
            found.append({"id": row.get("id") or f"row-{index}", "task": row["task"], "system": system,
                          "question": question, "reply": reply, "answer": row["answer"]})
    return found


def _sample(items: list[dict[str, Any]], *, count: int, rng: random.Random) -> list[dict[str, Any]]:
    """`count` items at random, kept in their input order (stable docs for the same seed)."""
    if len(items) <= count:
        return items
    return [items[i] for i in sorted(rng.sample(range(len(items)), count))]


def answer_choice_docs(rows: Sequence[Mapping[str, Any]], *, count: int, seed: int) -> list[dict[str, Any]]:
    """Multiple-choice docs: {id, task, system, question, choices, label, answer}.

    >>> rows = [{"messages": [{"role": "user", "content": f"What is {a} + 1?"},
    ...                       {"role": "assistant", "content": f"{a} + 1 = {a + 1}."}],
    ...          "task": "arithmetic", "answer": str(a + 1)} for a in range(5)]
    >>> doc = answer_choice_docs(rows, count=5, seed=0)[0]
    >>> doc["question"], doc["choices"][doc["label"]], len(doc["choices"])
    ('What is 0 + 1?', '0 + 1 = 1.', 4)
    """
    eligible = [r for r in _eligible(rows, CHOICE_FAMILIES) if swap_answer(r["reply"], r["answer"], "") is not None]
    pools: dict[tuple[str, str], set[str]] = {}
    for r in eligible:  # distractors come from the whole split, not only the sampled docs
        pools.setdefault((r["task"], answer_kind(r["answer"])), set()).add(r["answer"])
    rng = random.Random(seed)
    docs = []
    for r in _sample(eligible, count=count, rng=rng):
        others = sorted(pools[(r["task"], answer_kind(r["answer"]))] - {r["answer"]})
        if not others:
            continue  # nothing to choose between
        answers = [r["answer"], *rng.sample(others, min(DISTRACTORS, len(others)))]
        rng.shuffle(answers)
        choices = [swap_answer(r["reply"], r["answer"], a) for a in answers]
        docs.append({"id": r["id"], "task": r["task"], "system": r["system"], "question": r["question"],
                     "choices": choices, "label": answers.index(r["answer"]), "answer": r["answer"]})
    return docs


def arithmetic_docs(rows: Sequence[Mapping[str, Any]], *, count: int, seed: int) -> list[dict[str, Any]]:
    """Generate-until docs: {id, task, system, question, answer} of the arithmetic family.

    >>> rows = [{"messages": [{"role": "user", "content": "What is 2 * 3?"},
    ...                       {"role": "assistant", "content": "2 * 3 = 6."}], "task": "arithmetic", "answer": "6"}]
    >>> arithmetic_docs(rows, count=5, seed=0)
    [{'id': 'row-0', 'task': 'arithmetic', 'system': '', 'question': 'What is 2 * 3?', 'answer': '6'}]
    """
    picked = _sample(_eligible(rows, ("arithmetic",)), count=count, rng=random.Random(seed))
    return [{k: r[k] for k in ("id", "task", "system", "question", "answer")} for r in picked]


BUILDERS = {ANSWER_CHOICE: answer_choice_docs, ARITHMETIC_EXACT: arithmetic_docs}


def read_test_rows(path: str | Path) -> list[dict[str, Any]]:
    """The test split's rows (`messages`, `task`, `answer`, `id`)."""
    import pyarrow.parquet as pq

    if not Path(path).is_file():
        raise FileNotFoundError(f"test_path: {path} does not exist (materialize conversation_splits first)")
    table = pq.read_table(path)
    missing = {"messages", "task", "answer"} - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: the test split has no {sorted(missing)} column(s); "
                         "the built-in benchmark tasks need the built-in corpus's task and answer")
    return table.select([c for c in ("id", "messages", "task", "answer") if c in table.column_names]).to_pylist()


def write_builtin_tasks(names: Sequence[str], *, test_path: str | Path, out_dir: Path, cache_dir: Path,
                        docs_per_task: int, seed: int) -> Path:
    """Write each named built-in task's docs (`<task>.jsonl`) and filled-in YAML into `out_dir`.

    Returns `out_dir`, the folder to hand lm-eval as an include path. The YAMLs name their data by
    absolute path (lm-eval resolves a relative one against the working directory) until
    `make_relocatable` rewrites them. A task with no docs fails here, naming the task and why.
    """
    import yaml

    rows = read_test_rows(test_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        docs = BUILDERS[name](rows, count=docs_per_task, seed=seed)
        if not docs:
            raise ValueError(f"{name}: no docs: {test_path} has no single-turn rows of the built-in corpus's "
                             "task families with an exact answer (a Hub or local corpus has none); use "
                             "preset 'standard' or your own task YAMLs (include_path)")
        data = out_dir / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
        config = yaml.safe_load((TEMPLATES / f"{name}.yaml").read_text(encoding="utf-8"))
        # The datasets cache goes to the run's scratch: each run writes new files, and a cache
        # under ~/.cache would keep every run's copy forever.
        config["dataset_kwargs"] = {"data_files": {"test": str(data)}, "cache_dir": str(cache_dir)}
        (out_dir / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return out_dir


def make_relocatable(names: Sequence[str], *, out_dir: Path) -> None:
    """Point each task YAML in `out_dir` at the jsonl beside it, by file name, without a cache dir.

    The job's output folder moves into place after the job (an atomic rename), so an absolute
    path would name a folder that no longer exists; `cd tasks && lm_eval --include_path . ...`
    reads the relative one.
    """
    import yaml

    for name in names:
        path = out_dir / f"{name}.yaml"
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        config["dataset_kwargs"] = {"data_files": {"test": f"{name}.jsonl"}}
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
