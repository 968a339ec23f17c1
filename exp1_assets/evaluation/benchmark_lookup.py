"""Finding and loading lm-evaluation-harness tasks, with errors that say which task and why.

lm-eval's own failures name a dataset, not the task a user asked for ("Couldn't reach
'Rowan/hellaswag' on the Hub"), and an unknown name reads "Spec 'x' is not a registered task".
Here each requested name is looked up and loaded on its own, before the model is loaded, so a
run fails in seconds with the task's name, the reason and what to do instead.

The errors are ValueErrors (the launcher does not retry those: the same config fails the same
way), except a Hub that could not be reached while online: a ConnectionError, worth a retry.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from exp1_assets.evaluation.benchmark_results import HEADLINE_METRICS


def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def task_manager(names: Sequence[str], *, include_paths: Sequence[str]) -> Any:
    """An lm-eval TaskManager that knows every name in `names`, or a ValueError naming the rest.

    lm-eval's own ~15,000 task files are indexed only when a name is not in `include_paths`:
    indexing them took 13-16 s here, about as long as the built-in preset's evaluation on `tiny`.
    """
    from lm_eval.tasks import TaskManager

    for path in include_paths:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"include_path: {path} is not a folder (it should hold task YAML files)")
    if include_paths:
        manager = TaskManager(include_path=list(include_paths), include_defaults=False)
        if all(name in manager.all_tasks for name in names):
            return manager
    manager = TaskManager(include_path=list(include_paths) or None, include_defaults=True)
    require_known(manager, names, include_paths=include_paths)
    return manager


def require_known(manager: Any, names: Sequence[str], *, include_paths: Sequence[str]) -> None:
    """A ValueError naming each unknown name (with close matches) and where tasks were looked for."""
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        hints = {name: difflib.get_close_matches(name, manager.all_tasks, n=3) for name in unknown}
        listed = "; ".join(f"{name!r}" + (f" (did you mean {', '.join(hints[name])}?)" if hints[name] else "")
                           for name in unknown)
        looked = [f"lm-eval's built-in tasks ({lm_eval_tasks_dir()})", *include_paths]
        raise ValueError(f"unknown benchmark task(s): {listed}; looked in: {', '.join(looked)}")


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


HUB_ADVICE = ("Use preset 'builtin', or a local task YAML (dataset_path: json, dataset_kwargs.data_files) "
              "in a folder given as include_path")


def _unreachable(name: str, manager: Any, error: OSError) -> str:
    """Why `name`'s data could not be loaded, in a sentence that starts with the task's name."""
    entry = manager.task_index.get(name)
    dataset = (entry.cfg or {}).get("dataset_path") if entry is not None else None
    where = f" ({dataset})" if dataset else ""
    if isinstance(error, ConnectionError):
        why = "this machine is offline (HF_HUB_OFFLINE=1)" if _hub_offline() else "the Hub could not be reached"
        return f"{name}: its dataset{where} is on the Hugging Face Hub and {why}: {error}"
    return f"{name}: its data{where} could not be read: {error}"


def load_tasks(manager: Any, names: Sequence[str]) -> list[Any]:
    """The lm-eval Task/Group objects for `names`, one name at a time so an error can name it.

    A group (mmlu) stays one object; a tag expands to its tasks. Every name is tried, so one
    error lists each task that cannot load. Each task must report one of the accuracies this
    report headlines (`HEADLINE_METRICS`). All of it happens before any model is loaded.
    """
    loaded: list[Any] = []
    problems: list[tuple[str, OSError]] = []
    for name in names:
        try:
            built = manager.load([name])
        except OSError as error:  # ConnectionError (Hub), FileNotFoundError (local data_files)
            problems.append((_unreachable(name, manager, error), error))
            continue
        if name in built["groups"]:
            loaded.append(built["groups"][name])
        else:
            loaded.extend(built["tasks"].values())
        for task_name, task in built["tasks"].items():
            metrics = sorted(task.aggregation())
            if not set(metrics) & set(HEADLINE_METRICS):
                raise ValueError(f"{task_name}: reports {metrics}, none of {', '.join(HEADLINE_METRICS)}: "
                                         "benchmark_report reports accuracy against chance")
    if problems:
        hub = any(isinstance(error, ConnectionError) for _, error in problems)
        message = "\n".join([text for text, _ in problems] + ([HUB_ADVICE] if hub else []))
        kind = ConnectionError if hub and not _hub_offline() else ValueError
        raise kind(message) from problems[0][1]
    return loaded
