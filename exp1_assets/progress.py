"""Progress lines for long data steps: rows done, rows per second and, when the total is known, ETA.

On the real OpenHermes-2.5 each data step runs for minutes; a run log that stays silent that long
looks hung. A `Progress` counts what a step has done and, at most every `every_s` seconds, hands one
line to `emit` (an asset passes its logger; tests collect the lines). The same format as the
training job's progress lines, so a researcher reads one kind of line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

Emit = Callable[[str], None]


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


class Progress:
    """`advance(n)` as work gets done; a line every `every_s` seconds and one at `finish()`.

    >>> lines = []
    >>> p = Progress("packing train", total=4, unit="rows", emit=lines.append, every_s=0.0)
    >>> p.advance(2); p.finish()
    >>> lines[0].startswith("packing train: 2/4 rows (50%)") and "eta=" in lines[0]
    True
    >>> lines[1].startswith("packing train: done, 2/4 rows in ")
    True
    """

    def __init__(self, what: str, *, total: int | None, unit: str, emit: Emit | None,
                 every_s: float = 15.0, clock: Callable[[], float] = time.monotonic) -> None:
        if every_s < 0:
            raise ValueError(f"every_s: must be >= 0, got {every_s}")
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self._emit, self._clock = emit, clock
        self.done = 0
        self._started = self._last = clock()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = self._clock()
        if self._emit is not None and now - self._last >= self.every_s:
            self._last = now
            self._emit(self.line(now))

    def finish(self) -> None:
        if self._emit is not None:
            self._emit(self.line(self._clock(), final=True))

    def line(self, now: float, *, final: bool = False) -> str:
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        count = f"{self.done:,}/{self.total:,}" if self.total else f"{self.done:,}"
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        if final:
            return f"{self.what}: done, {count} {self.unit} in {format_duration(elapsed)} ({rate:,.0f} {self.unit}/s)"
        eta = ""
        if self.total and rate > 0:
            eta = f" eta={format_duration(max(self.total - self.done, 0) / rate)}"
        return f"{self.what}: {count} {self.unit}{share} {rate:,.0f} {self.unit}/s{eta}"


@dataclass(frozen=True)
class ProgressLog:
    """Where a long step's progress lines go, and how often: what a data function is handed."""

    emit: Emit
    """Receives each line (an asset's `context.log.info`, a list's `append` in tests)."""
    every_s: float = 15.0
    """At most one line per this many seconds, plus the final one."""

    def start(self, what: str, *, total: int | None, unit: str) -> Progress:
        return Progress(what, total=total, unit=unit, emit=self.emit, every_s=self.every_s)


def start(log: ProgressLog | None, what: str, *, total: int | None, unit: str) -> Progress:
    """A `Progress` that reports to `log`, or counts silently when there is none."""
    if log is None:
        return Progress(what, total=total, unit=unit, emit=None)
    return log.start(what, total=total, unit=unit)
