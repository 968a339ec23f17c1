"""Trainer callbacks: progress to the reporter, checkpoint manifests, the initial validation loss.

Test-only fault injection lives apart, in `training/faults.py`, installed only when the spec's
`debug` section asks for a fault.

Progress lines go through `runtime.Reporter` (Dagster Pipes on rank 0 when launched by Dagster,
stderr otherwise); every rank runs the callback but only rank 0's reporter is live.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from exp1_assets.progress import format_duration
from exp1_assets.runtime import Reporter

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

        import torch.distributed as dist

        # Every rank writes its own files (its RNG state; with FSDP its shards): wait for all of
        # them, or the manifest could record a file that another rank is still writing.
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            write_manifest(folder)


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


class TrainingAlreadyDone(Exception):
    """Raised from `on_train_begin` when the resumed checkpoint is already at the planned step."""


class PlannedStepGuard(TrainerCallback):
    """Resuming from the last planned step's checkpoint must not train again.

    A run killed after its final checkpoint but before it wrote the model resumes at
    `global_step == max_steps`, and the Trainer's loop then takes one more optimizer step before
    it checks the limit (seen: "steps": 13 of 12, a checkpoint-13). By `on_train_begin` the weights,
    optimizer and state are restored, so stopping there leaves the trained model in place.
    """

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> None:
        if state.max_steps and state.global_step >= state.max_steps:
            raise TrainingAlreadyDone(f"resumed at step {state.global_step} of {state.max_steps}")
