"""What can go wrong launching a job, and whether trying again can help.

Every error carries a human description (the first failing rank's traceback where there is one),
plain metadata values and `retryable`. A killed, stalled or preempted job is worth a retry: a
training job resumes from its latest checkpoint. A job that rejected its own spec, an sbatch
rejection or an unknown backend fail the same way every time: retrying only burns the queue.

Not dataclasses on purpose: `contextlib.contextmanager` sets `__traceback__` on the exceptions
that pass through it, which a frozen dataclass refuses.
"""

from __future__ import annotations

from collections.abc import Mapping

PlainValue = str | int

class LaunchError(Exception):
    """Base of the launch errors: a description, plain metadata and whether a retry can help.

    >>> error = LaunchError("boom", retryable=False, metadata={"exit_code": 3})
    >>> str(error), error.retryable, error.metadata
    ('boom', False, {'exit_code': 3})
    """

    def __init__(self, description: str, *, retryable: bool,
                 metadata: Mapping[str, PlainValue] | None = None) -> None:
        if not description.strip():
            raise ValueError(f"{type(self).__name__}: description must not be empty")
        super().__init__(description)
        self.description = description
        self.retryable = retryable
        # Values are plain (str/int): the Dagster layer picks how to show them.
        self.metadata: dict[str, PlainValue] = dict(metadata or {})


class JobFailed(LaunchError):
    """The job exited non-zero: its exit code, the ranks that left an error file, the log's tail."""

    def __init__(self, description: str, *, exit_code: int, failed_ranks: tuple[str, ...], log_tail: str,
                 retryable: bool) -> None:
        super().__init__(description, retryable=retryable, metadata={
            "exit_code": exit_code,
            "failed_ranks": ", ".join(failed_ranks) or "unknown",
            "log_tail": log_tail,
        })
        self.exit_code = exit_code
        self.failed_ranks = failed_ranks
        self.log_tail = log_tail


class JobPreempted(LaunchError):
    """The job stopped at a checkpoint when warned of its time limit or of preemption: resume it."""

    def __init__(self, description: str, *, exit_code: int, log_tail: str) -> None:
        super().__init__(description, retryable=True, metadata={"exit_code": exit_code, "log_tail": log_tail})
        self.exit_code = exit_code
        self.log_tail = log_tail


class JobStalled(LaunchError):
    """The job printed and reported nothing for longer than the stall timeout; it was stopped."""

    def __init__(self, description: str, *, idle_s: float, log_tail: str) -> None:
        super().__init__(description, retryable=True, metadata={"log_tail": log_tail})
        self.idle_s = idle_s
        self.log_tail = log_tail


class SubmitFailed(LaunchError):
    """The scheduler refused the job (e.g. sbatch rejected the script): the same next time."""

    def __init__(self, description: str) -> None:
        super().__init__(description, retryable=False)


class BackendUnavailable(LaunchError):
    """The configured backend does not exist, or its client commands are missing here."""

    def __init__(self, description: str) -> None:
        super().__init__(description, retryable=False)


class SchedulerUnreachable(LaunchError):
    """The scheduler stopped answering about a submitted job; a later attempt may reach it."""

    def __init__(self, description: str) -> None:
        super().__init__(description, retryable=True)
