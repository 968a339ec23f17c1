"""Pipes file message readers: one that only ever parses whole lines, and one for requeued jobs.

Dagster's `PipesFileMessageReader` tails the file with `readline()` and parses whatever comes
back, but at the end of the file `readline()` returns a line the job is still writing. A message
longer than the writer's buffer (the training materialization carries a base64 loss curve, tens
of KB) then arrives in pieces: the first piece fails `json.loads`, the reader thread dies, and
every later message of the job — materialization, checks — is lost (seen in the launcher test as
`JSONDecodeError: Unterminated string` and a materialization without its metadata). Here a piece
without its newline waits for the rest. A last piece still incomplete when the session closes
was cut off by a killed job: it is dropped, the job's failure is reported on its own path.

A Slurm job that requeues itself opens and closes Pipes once per run in the same file:
`RequeueTolerantMessageReader` passes on only the last run's `closed` message.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from dagster import PipesFileMessageReader
from dagster_pipes import PipesDefaultMessageWriter


def complete_lines(path: str, *, should_stop: Callable[[], bool], poll_s: float = 0.01) -> Iterator[str]:
    """Follow `path` like `tail -f`, yielding only newline-terminated lines, until `should_stop()`."""
    pending = ""
    with open(path, encoding="utf-8") as stream:
        while True:
            piece = stream.readline()
            if piece:
                pending += piece
                if pending.endswith("\n"):
                    yield pending
                    pending = ""
            elif should_stop():
                return
            else:
                time.sleep(poll_s)


class WholeLineFileMessageReader(PipesFileMessageReader):
    """`PipesFileMessageReader` with the reading loop above; same parameters, same file protocol."""

    @contextlib.contextmanager
    def read_messages(self, handler: Any) -> Iterator[dict[str, Any]]:
        closed = threading.Event()
        open(self._path, "w", encoding="utf-8").close()

        def read() -> None:
            try:
                for line in complete_lines(self._path, should_stop=closed.is_set):
                    handler.handle_message(json.loads(line))
            except Exception:  # reported to the run like Dagster's own reader does, then re-raised
                handler.report_pipes_framework_exception(f"{type(self).__name__} reader thread", sys.exc_info())
                raise

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        try:
            yield {PipesDefaultMessageWriter.FILE_PATH_KEY: self._path,
                   PipesDefaultMessageWriter.INCLUDE_STDIO_IN_MESSAGES_KEY: self._include_stdio_in_messages}
        finally:
            closed.set()
            thread.join()
            if self._cleanup_file and os.path.exists(self._path):
                os.remove(self._path)


class RequeueTolerantMessageReader(WholeLineFileMessageReader):
    """Only the last run's `closed` message counts: a requeued Slurm job opens Pipes once per run.

    Dagster's handler warns about every message after a `closed` one ("unexpected message received
    after closed"): the resumed run's whole progress would read as warnings. So a `closed` message
    is held back while the job may still run again, dropped when another message follows it (an
    earlier run's), and handed on when the session ends.
    """

    @contextlib.contextmanager
    def read_messages(self, handler: Any) -> Iterator[dict[str, Any]]:
        held = _ClosedLast(handler)
        try:
            with super().read_messages(held) as params:
                yield params
        finally:
            held.release()


class _ClosedLast:
    """A Pipes message handler in front of Dagster's that passes on `closed` only at `release()`."""

    def __init__(self, handler: Any) -> None:
        self._handler = handler
        self._closed: dict[str, Any] | None = None

    def handle_message(self, message: dict[str, Any]) -> None:
        if message.get("method") == "closed":
            self._closed = message
            return
        self._closed = None  # the run that closed was not the last one
        self._handler.handle_message(message)

    def release(self) -> None:
        if self._closed is not None:
            self._handler.handle_message(self._closed)
            self._closed = None

    def __getattr__(self, name: str) -> Any:  # everything else (framework exception reports) as it is
        return getattr(self._handler, name)
