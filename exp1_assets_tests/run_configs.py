"""Run configs for tests: the real graph, scaled down so that a run takes seconds, not minutes.

`FAST` keeps every stage real (built-in corpus -> BPE -> packing -> accelerate-launched training
-> evaluation -> samples) but small. `QUALITY` is the experiment's own tiny run (the default
config), used once by the test that asserts the research plan's thresholds.
"""

from __future__ import annotations

from typing import Any


def fast_run_config(*, max_steps: int = 12, save_steps: int = 6, builtin_size: int = 1500) -> dict[str, Any]:
    return {
        "ops": {
            "raw_conversations": {"config": {"builtin_size": builtin_size}},
            "tokenizer": {"config": {"vocab_size": 600}},
            "packed_dataset": {"config": {"max_length": 128}},
            "model_checkpoint": {"config": {"max_steps": max_steps, "save_steps": save_steps,
                                            "eval_steps": save_steps, "logging_steps": 2,
                                            "per_device_batch": 4}},
            "evaluation_report": {"config": {"num_samples": 16, "max_new_tokens": 24, "max_eval_blocks": 8}},
            "sample_set": {"config": {"variations": 1, "temperatures": [0.8], "max_new_tokens": 16}},
            "benchmark_report": {"config": {"builtin_docs": 12}},
        }
    }


def only(config: dict[str, Any], *assets: str) -> dict[str, Any]:
    """The part of a run config for the selected assets (Dagster rejects config for others)."""
    return {"ops": {k: v for k, v in config["ops"].items() if k in assets}}


def defs_modules() -> list:
    """Every module of the Dagster layer (`exp1_assets/defs/`), imported: new asset modules count too."""
    import importlib
    import pkgutil

    import exp1_assets.defs as package

    return [importlib.import_module(f"{package.__name__}.{info.name}")
            for info in pkgutil.iter_modules(package.__path__)]
