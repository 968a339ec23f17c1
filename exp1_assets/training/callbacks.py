"""Trainer callbacks: progress to the reporter, and test-only fault injection.

Progress lines go through `runtime.Reporter` (Dagster Pipes on rank 0 when launched by Dagster,
stderr otherwise); every rank runs the callback but only rank 0's reporter is live.
"""

from __future__ import annotations

import json

import os
import signal
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from exp1_assets.runtime import Reporter, global_rank

FAULT_RANK_ENV = "EXP1_FAULT_RANK"
KILL_DURING_SAVE_ENV = "EXP1_KILL_DURING_SAVE"
HANG_RANK_ENV = "EXP1_HANG_RANK"


def format_duration(seconds: float) -> str:
    """
    >>> format_duration(3725)
    '1h02m05s'
    >>> format_duration(42.4)
    '42s'
    """
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressCallback(TrainerCallback):
    """At each logging step: step/max, loss, lr, tokens/s (this session) and ETA."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self._start_time: float | None = None
        self._start_step = 0
        self.start_tokens = 0

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> None:
        # On resume, state already holds the restored step; measure speed from here on.
        self._start_time = time.perf_counter()
        self._start_step = state.global_step
        self.start_tokens = state.num_input_tokens_seen

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not logs or self._start_time is None:
            return
        if "eval_loss" in logs:
            self.reporter.log(f"step {state.global_step}/{state.max_steps} val_loss={logs['eval_loss']:.4f}")
            return
        if "loss" not in logs:
            return
        elapsed = max(time.perf_counter() - self._start_time, 1e-9)
        steps_done = state.global_step - self._start_step
        tokens_per_s = (state.num_input_tokens_seen - self.start_tokens) / elapsed
        eta = (state.max_steps - state.global_step) * elapsed / steps_done if steps_done else float("nan")
        self.reporter.log(
            f"step {state.global_step}/{state.max_steps} loss={logs['loss']:.4f} "
            f"lr={logs.get('learning_rate', float('nan')):.3g} tokens/s={tokens_per_s:,.0f} "
            f"eta={format_duration(eta) if eta == eta else '?'}"
        )


class ManifestCallback(TrainerCallback):
    """After each Trainer save, rank 0 records sizes and sha256s of the checkpoint's files.

    Resume verifies them (train.latest_checkpoint) and falls back to an earlier checkpoint if
    the latest one was damaged.
    """

    def on_save(self, args: TrainingArguments, state: TrainerState,
                control: TrainerControl, **kwargs: Any) -> None:
        from exp1_assets.training.integrity import write_manifest

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            write_manifest(folder)


class FaultInjectionCallback(TrainerCallback):
    """Test-only faults when training begins: raise on the rank named by $EXP1_FAULT_RANK
    (error reporting), sleep forever on the rank named by $EXP1_HANG_RANK (stall detection)."""

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> None:
        target = os.environ.get(FAULT_RANK_ENV, "")
        if target and int(target) == global_rank():
            raise RuntimeError(f"injected fault on rank {global_rank()} ({FAULT_RANK_ENV}={target})")
        hang = os.environ.get(HANG_RANK_ENV, "")
        if hang and int(hang) == global_rank():
            while True:  # the other ranks block in their first collective: the whole job stalls
                time.sleep(3600)

    def on_save(self, args: TrainingArguments, state: TrainerState,
                control: TrainerControl, **kwargs: Any) -> None:
        """$EXP1_KILL_DURING_SAVE=<step>: die mid-write of that checkpoint (its weights cut short)."""
        step = os.environ.get(KILL_DURING_SAVE_ENV, "")
        if not step or int(step) != state.global_step or not state.is_world_process_zero:
            return
        marker = Path(args.output_dir) / "killed-during-save"
        if marker.exists():  # once per run dir: the retry must be allowed to finish
            return
        marker.write_text(step)
        weights = Path(args.output_dir) / f"checkpoint-{state.global_step}" / "model.safetensors"
        if weights.exists():
            with open(weights, "r+b") as f:
                f.truncate(weights.stat().st_size // 2)
        os.killpg(os.getpgid(0), signal.SIGKILL)  # the whole job, as a lost node would


class InitialLossCallback(TrainerCallback):
    """Keep the untrained model's validation loss (the `eval_on_start` evaluation) on disk at once.

    A run killed before it finishes still leaves it, so a resumed run reports the real "before"
    value instead of evaluating its partly trained model.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001 - HF signature
        if state.global_step == 0 and state.is_world_process_zero and metrics and not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"eval_loss": float(metrics["eval_loss"])}))
