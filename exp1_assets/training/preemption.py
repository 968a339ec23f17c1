"""Stopping at a checkpoint when the scheduler warns that the job's time is nearly up.

On Slurm every process of the job's step gets SIGUSR1 `warning_lead_s` before the time limit, or
at preemption where the cluster sends it then (launch/sbatch.py). `accelerate launch` and torchrun's
agent ignore it (the node command does that before exec'ing them); each rank's handler here only
sets a flag. At the end of every optimizer step the ranks agree on that flag (one all-reduce of a
single number), so all of them stop at the same step even when the signal reached them a step
apart: the Trainer saves a checkpoint there (`ManifestCallback` completes it after a barrier) and
stops. `train()` then writes no final model; rank 0 leaves `preempted_marker(run_dir)`, every rank
waits for it and exits with `PREEMPTED_EXIT_CODE` ("preempted, resume me"): the batch script
requeues the job or the launcher's retry runs it again, and both resume from that checkpoint
(`train.latest_checkpoint`).
"""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from exp1_assets.runtime import PREEMPTED_EXIT_CODE, PREEMPTION_SIGNAL, Reporter, global_rank, preempted_marker

WARNING_SIGNAL = signal.Signals[f"SIG{PREEMPTION_SIGNAL}"]

# Set when a callback in this process stopped training early; read by `exit_code()` in `main`.
_stopped_at_step: int | None = None


class PreemptionCallback(TrainerCallback):
    """Save a checkpoint and stop at the first step end after any rank got the warning signal.

    Creating it installs the handler: create it early, so that a signal arriving while the model
    loads is not lost (until then the rank ignores the signal, inherited from the node command).
    """

    def __init__(self, *, run_dir: str | Path, reporter: Reporter) -> None:
        self.run_dir = Path(run_dir)
        self.reporter = reporter
        self.signalled = False
        self.stopped_at_step: int | None = None
        signal.signal(WARNING_SIGNAL, self._on_signal)
        # Restart the system calls it interrupts instead of failing them with EINTR: the signal may
        # land in a gloo/NCCL or data-loading thread's blocking call.
        signal.siginterrupt(WARNING_SIGNAL, False)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signalled = True  # only a flag: the step loop acts on it at a safe point

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> None:
        global _stopped_at_step

        if not any_rank(self.signalled) or self.stopped_at_step is not None:
            return
        control.should_save = True  # a resume point at this very step
        control.should_log = True  # the loss since the last log line goes into that checkpoint
        if state.global_step >= state.max_steps:
            return  # the last step: the run finishes normally (this checkpoint covers a kill while saving)
        control.should_training_stop = True
        self.stopped_at_step = _stopped_at_step = state.global_step
        self.reporter.warning(f"SIG{PREEMPTION_SIGNAL} (time limit or preemption near): saving checkpoint-"
                              f"{state.global_step} and stopping at step {state.global_step}/{state.max_steps}; "
                              "the next attempt resumes there")

    def leave(self) -> None:
        """After the stop: rank 0 leaves the marker for the batch script; every rank waits for it.

        The wait matters: the first rank to exit non-zero makes its node's agent (and srun's
        --kill-on-bad-exit) kill the other ranks, rank 0 maybe before it wrote the marker.
        """
        if global_rank() == 0:
            step = self.stopped_at_step
            text = f"stopped at step {step} (checkpoint-{step}) on SIG{PREEMPTION_SIGNAL}\n"
            preempted_marker(self.run_dir).write_text(text)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()


def any_rank(flag: bool) -> bool:
    """Whether `flag` is set on any rank: a MAX all-reduce of one number (on the GPU under NCCL).

    >>> any_rank(True), any_rank(False)  # a single process: its own flag
    (True, False)
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    on_gpu = "nccl" in str(dist.get_backend()).lower()  # NCCL reduces device tensors only
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def exit_code() -> int:
    """0, or `PREEMPTED_EXIT_CODE` when training stopped early at the warning signal."""
    return PREEMPTED_EXIT_CODE if _stopped_at_step is not None else 0
