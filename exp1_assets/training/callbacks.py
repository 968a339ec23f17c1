"""Trainer callbacks: progress to the reporter, and test-only fault injection.

Progress lines go through `runtime.Reporter` (Dagster Pipes on rank 0 when launched by Dagster,
stderr otherwise); every rank runs the callback but only rank 0's reporter is live.
"""

from __future__ import annotations

import os
import time
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from exp1_assets.runtime import Reporter, global_rank

FAULT_RANK_ENV = "EXP1_FAULT_RANK"


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


class FaultInjectionCallback(TrainerCallback):
    """Raise on the rank named by $EXP1_FAULT_RANK when training begins (tests of error reporting)."""

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> None:
        target = os.environ.get(FAULT_RANK_ENV, "")
        if target and int(target) == global_rank():
            raise RuntimeError(f"injected fault on rank {global_rank()} ({FAULT_RANK_ENV}={target})")
