"""lm-evaluation-harness results as this project reports them: accuracy, stderr, chance, verdict.

One entry per task the user asked for (a group such as `mmlu` is one entry, its aggregate; a tag
expands to its tasks), in the shape of benchmarks.json (docs/artifacts.md):
- `metric`: the task's headline accuracy, the first it reports of `acc_norm`, `acc`,
  `exact_match` (acc_norm where both exist, as the Open LLM Leaderboard reads hellaswag and ARC);
- `stderr`: lm-eval's, sqrt(p(1-p)/(n-1)) for a mean of 0/1 scores (None where it has none);
- `chance`: what guessing scores: for multiple choice the mean over docs of 1/(number of
  choices), from the logged samples; 0 for generated exact matches; None otherwise;
- `above_chance`: value - 2 stderr > chance (False when either is unknown: not shown).

Plain Python, no lm-eval import: the numbers come in as lm-eval's result dictionary.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from exp1_assets.markdown import md_escape, md_table

HEADLINE_METRICS = ("acc_norm", "acc", "exact_match")


def headline_metric(task_results: Mapping[str, Any]) -> tuple[str, str] | None:
    """(metric, filter) of the headline accuracy among lm-eval's `metric,filter` keys; None if none.

    >>> headline_metric({"alias": "x", "acc,none": 0.5, "acc_norm,none": 0.6, "acc_norm_stderr,none": 0.1})
    ('acc_norm', 'none')
    >>> headline_metric({"exact_match,answer": 0.1}), headline_metric({"bleu,none": 3.0})
    (('exact_match', 'answer'), None)
    """
    for metric in HEADLINE_METRICS:
        for key in task_results:
            name, _, filter_name = key.partition(",")
            if name == metric and filter_name:
                return metric, filter_name
    return None


def number_of_choices(sample: Mapping[str, Any]) -> int:
    """Choices of a logged multiple-choice sample: one log-likelihood request each.

    With `acc_mutual_info` lm-eval adds an unconditional request per choice, so there are twice
    as many requests as choices.

    >>> number_of_choices({"arguments": [["ctx", "a"], ["ctx", "b"], ["ctx", "c"]], "metrics": ["acc"]})
    3
    >>> number_of_choices({"arguments": [["c", "a"], ["c", "b"], ["", "a"], ["", "b"]], "metrics": ["acc_mutual_info"]})
    2
    """
    requests = len(sample["arguments"])
    return requests // 2 if "acc_mutual_info" in sample.get("metrics", ()) else requests


def chance_level(output_type: str, samples: Sequence[Mapping[str, Any]]) -> float | None:
    """What guessing scores on these docs.

    >>> chance_level("multiple_choice", [{"arguments": [1, 2]}, {"arguments": [1, 2, 3, 4]}])
    0.375
    >>> chance_level("generate_until", []), chance_level("loglikelihood", [{}])
    (0.0, None)
    """
    if output_type == "multiple_choice":
        return sum(1 / number_of_choices(s) for s in samples) / len(samples) if samples else None
    if output_type == "generate_until":
        return 0.0  # an exact match is never produced by chance
    return None


def above_chance(value: float, stderr: float | None, chance: float | None) -> bool:
    """Whether `value` is above `chance` by more than 2 stderr (unknown stderr or chance: False).

    >>> above_chance(0.5, 0.1, 0.25), above_chance(0.4, 0.1, 0.25), above_chance(0.4, None, 0.25)
    (True, False, False)
    """
    if stderr is None or chance is None:
        return False
    return value - 2 * stderr > chance


def _number(value: Any) -> float | None:
    """lm-eval writes "N/A" where it has no stderr."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _children(results: Mapping[str, Any]) -> dict[str, list[str]]:
    return {group: list(children) for group, children in (results.get("group_subtasks") or {}).items()}


def reported_names(results: Mapping[str, Any]) -> list[str]:
    """The top-level entries of lm-eval's results: requested tasks and groups, not a group's members.

    >>> reported_names({"results": {"mmlu": {}, "mmlu_stem": {}, "mmlu_x": {}, "piqa": {}},
    ...                 "group_subtasks": {"mmlu": ["mmlu_stem"], "mmlu_stem": ["mmlu_x"]}})
    ['mmlu', 'piqa']
    """
    members = {child for children in _children(results).values() for child in children}
    return [name for name in results["results"] if name not in members]


def leaf_tasks(results: Mapping[str, Any], name: str) -> list[str]:
    """The tasks (not groups) under `name`, itself if it is a task.

    >>> leaf_tasks({"group_subtasks": {"g": ["h", "c"], "h": ["a", "b"]}}, "g")
    ['a', 'b', 'c']
    >>> leaf_tasks({"group_subtasks": {"piqa": []}}, "piqa")
    ['piqa']
    """
    children = _children(results)
    if not children.get(name):  # lm-eval may list a plain task with no members
        return [name]
    return [leaf for child in children[name] for leaf in leaf_tasks(results, child)]


def _output_type(results: Mapping[str, Any], leaves: Iterable[str]) -> str:
    kinds = {(results.get("configs") or {}).get(leaf, {}).get("output_type", "unknown") for leaf in leaves}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def summarize(results: Mapping[str, Any], samples: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, dict]:
    """benchmarks.json's `tasks`: one entry per reported task (see the module docstring).

    `samples` are lm-eval's logged samples per task (its `results["samples"]`).
    """
    summary = {}
    for name in reported_names(results):
        numbers = results["results"][name]
        picked = headline_metric(numbers)
        if picked is None:
            raise ValueError(f"{name}: lm-eval reported none of {', '.join(HEADLINE_METRICS)} "
                             f"(it reported {sorted(k for k in numbers if ',' in k)})")
        metric, filter_name = picked
        leaves = leaf_tasks(results, name)
        docs = [s for leaf in leaves for s in samples.get(leaf, ())]
        output_type = _output_type(results, leaves)
        value = float(numbers[f"{metric},{filter_name}"])
        stderr = _number(numbers.get(f"{metric}_stderr,{filter_name}"))
        chance = chance_level(output_type, docs) if output_type != "mixed" else None
        summary[name] = {
            "metric": metric, "value": value, "stderr": stderr, "chance": chance,
            "above_chance": above_chance(value, stderr, chance), "samples": len(docs),
            "output_type": output_type, "filter": filter_name,
            "metrics": {key.partition(",")[0]: _number(v) for key, v in numbers.items()
                        if key.endswith(f",{filter_name}") and "_stderr" not in key and _number(v) is not None},
        }
    return summary


def benchmarks_table(tasks: Mapping[str, Mapping[str, Any]]) -> str:
    """The per-task Markdown table (the report's and the asset metadata's).

    >>> print(benchmarks_table({"t": {"metric": "acc", "value": 0.5, "stderr": 0.05, "chance": 0.25,
    ...                               "above_chance": True, "samples": 100, "output_type": "multiple_choice"}}))
    | task | metric | value | stderr | chance | above chance (2 stderr) | docs | type |
    | --- | --- | --- | --- | --- | --- | --- | --- |
    | t | acc | 0.5000 | 0.0500 | 0.2500 | yes | 100 | multiple_choice |
    """
    rows = [[md_escape(name), t["metric"], t["value"], t["stderr"], t["chance"], t["above_chance"], t["samples"],
             t["output_type"]] for name, t in tasks.items()]
    return md_table(["task", "metric", "value", "stderr", "chance", "above chance (2 stderr)", "docs", "type"], rows)


def benchmarks_markdown(report: Mapping[str, Any]) -> str:
    """benchmarks.md: the table, what was run, and how to read it."""
    tasks = report["tasks"]
    above = sum(bool(t["above_chance"]) for t in tasks.values())
    return "\n".join([
        f"# Benchmarks: {md_escape(str(report.get('checkpoint', '')))}", "",
        f"lm-evaluation-harness {md_escape(report['lm_eval_version'])}, zero-shot unless a task sets otherwise, "
        f"chat template {'applied' if report['settings'].get('apply_chat_template') else 'not applied'}.", "",
        benchmarks_table(tasks), "",
        f"{above} of {len(tasks)} task(s) above chance: accuracy minus 2 stderr above the chance level "
        "(multiple choice: mean of 1/choices over the docs; generated exact match: 0).", "",
        "Per-doc records (lm-eval's logged samples): `samples/<task>.jsonl`.", "",
    ])
