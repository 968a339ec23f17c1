"""The environment knobs, read in this one place.

Everything else takes its settings as arguments, config or resource fields. The Dagster layer asks
`Settings.from_environ()` where a knob must be known (the store's root when no `root` is
configured, the training retry count, the schedule's cron); the launched jobs read none of these.

| variable              | default           | what it sets                                              |
|-----------------------|-------------------|-----------------------------------------------------------|
| `EXP1_HOME`           | `./.exp1_home`    | the artifact store's root, unless its `root` is configured |
| `EXP1_TRAIN_RETRIES`  | `1`               | retries of a training run that died (each one resumes)     |
| `EXP1_TRAIN_RETRY_DELAY_S` | `5`          | seconds before the first retry (linear backoff after it)   |
| `EXP1_SCHEDULE_CRON`  | `0 3 * * 1`       | when `weekly_experiment` runs (Mondays 03:00)              |

Test-only fault hooks are not environment knobs: they are the `debug` section of the training
spec (`exp1_assets.training.spec.DebugSpec`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

HOME_VAR, RETRIES_VAR, CRON_VAR = "EXP1_HOME", "EXP1_TRAIN_RETRIES", "EXP1_SCHEDULE_CRON"
RETRY_DELAY_VAR = "EXP1_TRAIN_RETRY_DELAY_S"


@dataclass(frozen=True)
class Settings:
    """What the environment says, validated."""

    home: Path = Path(".exp1_home")
    """Artifact root (`EXP1_HOME`); relative paths are under the working directory (git ignores it)."""
    train_retries: int = 1
    """Retries of a training run that died (`EXP1_TRAIN_RETRIES`); a bad config is never retried."""
    train_retry_delay_s: float = 5.0
    """Seconds before the first retry (`EXP1_TRAIN_RETRY_DELAY_S`), growing linearly after it: time for
    a preempted node's GPUs and ports to come free. The tests set it low."""
    schedule_cron: str = "0 3 * * 1"
    """Cron of the weekly rerun of every size (`EXP1_SCHEDULE_CRON`)."""

    def __post_init__(self) -> None:
        if self.train_retries < 0:
            raise ValueError(f"{RETRIES_VAR}: must be >= 0, got {self.train_retries}")
        if not self.train_retry_delay_s >= 0:  # also rejects NaN
            raise ValueError(f"{RETRY_DELAY_VAR}: must be >= 0 seconds, got {self.train_retry_delay_s}")
        if len(self.schedule_cron.split()) != 5:
            raise ValueError(f"{CRON_VAR}: {self.schedule_cron!r} is not a 5-field cron expression")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """The settings that `environ` (default: this process's environment) gives.

        >>> Settings.from_environ({"EXP1_TRAIN_RETRIES": "3"}).train_retries
        3
        >>> Settings.from_environ({}).schedule_cron
        '0 3 * * 1'
        >>> Settings.from_environ({"EXP1_TRAIN_RETRIES": "two"})
        Traceback (most recent call last):
        ...
        ValueError: EXP1_TRAIN_RETRIES: 'two' is not an integer
        >>> Settings.from_environ({"EXP1_TRAIN_RETRY_DELAY_S": "0.5"}).train_retry_delay_s
        0.5
        """
        env = os.environ if environ is None else environ
        defaults = cls()
        raw_retries, raw_delay = env.get(RETRIES_VAR), env.get(RETRY_DELAY_VAR)
        try:
            retries = defaults.train_retries if raw_retries is None else int(raw_retries)
        except ValueError:
            raise ValueError(f"{RETRIES_VAR}: {raw_retries!r} is not an integer") from None
        try:
            delay = defaults.train_retry_delay_s if raw_delay is None else float(raw_delay)
        except ValueError:
            raise ValueError(f"{RETRY_DELAY_VAR}: {raw_delay!r} is not a number of seconds") from None
        return cls(
            home=Path(env.get(HOME_VAR) or defaults.home).expanduser().resolve(),
            train_retries=retries,
            train_retry_delay_s=delay,
            schedule_cron=env.get(CRON_VAR) or defaults.schedule_cron,
        )
