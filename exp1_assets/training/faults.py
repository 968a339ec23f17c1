"""Test-only faults, driven by the training spec's `debug` section (`spec.DebugSpec`).

The suite proves the launcher's failure paths with real faults inside a real job: a rank that
raises (its own error must reach Dagster), a rank that hangs (the stall timeout must stop the
job), a kill in the middle of writing a checkpoint (the retry must skip the damaged one), steps
padded to a minimum length (a run must outlast a Slurm time limit however fast the machine). The
callback is installed only when the spec asks for a fault; a production run never has it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from exp1_assets.runtime import global_rank
from exp1_assets.training.spec import DebugSpec


class FaultInjectionCallback(TrainerCallback):
    """Raise, hang or die on cue, as `debug` says."""

    def __init__(self, debug: DebugSpec) -> None:
        self.debug = debug
        self.step_started = time.monotonic()

    def on_step_begin(self, args: TrainingArguments, state: TrainerState,
                      control: TrainerControl, **kwargs: Any) -> None:
        self.step_started = time.monotonic()

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> None:
        """Pad the step to `min_step_s`: a run then lasts at least steps x min_step_s on any machine."""
        if self.debug.min_step_s is not None:
            time.sleep(max(0.0, self.debug.min_step_s - (time.monotonic() - self.step_started)))

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> None:
        rank = global_rank()
        if self.debug.fail_on_rank == rank:
            raise RuntimeError(f"injected fault on rank {rank} (debug.fail_on_rank={rank})")
        if self.debug.hang_on_rank == rank:
            while True:  # the other ranks block in their first collective: the whole job stalls
                time.sleep(3600)

    def on_save(self, args: TrainingArguments, state: TrainerState,
                control: TrainerControl, **kwargs: Any) -> None:
        """Die mid-write of checkpoint `kill_during_save_at_step` (its weights cut short)."""
        step = self.debug.kill_during_save_at_step
        if step != state.global_step or not state.is_world_process_zero:
            return
        marker = Path(args.output_dir) / "killed-during-save"
        if marker.exists():  # once per run dir: the retry must be allowed to finish
            return
        marker.write_text(str(step))
        weights = Path(args.output_dir) / f"checkpoint-{state.global_step}" / "model.safetensors"
        if weights.exists():
            with open(weights, "r+b") as f:
                f.truncate(weights.stat().st_size // 2)
        os.killpg(os.getpgid(0), signal.SIGKILL)  # the whole job, as a lost node would
