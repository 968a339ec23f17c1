"""The artifact store: one root directory, deterministic paths, atomic writes.

Large artifacts (corpora, blocks, checkpoints) never pass through Dagster: assets write them here
and hand only small metadata to the event log. On a cluster the root is a shared filesystem, so
the launched jobs (on other nodes) and the code server see the same paths.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from dagster import ConfigurableResource, Failure
from pydantic import Field

DEFAULT_ROOT = ".exp1_home"  # under the working directory; git ignores it


class ArtifactStore(ConfigurableResource):
    """Root of every artifact: `root`, else `$EXP1_HOME`, else `./.exp1_home`."""

    root: str = Field(default="", description="Artifact root; empty means $EXP1_HOME or ./.exp1_home")
    keep_run_dirs: int = Field(
        default=3, ge=0,
        description="Run dirs kept per asset partition after a success (most recently used first, the "
                    "current one always); 0 keeps all",
    )

    @property
    def base(self) -> Path:
        root = self.root or os.environ.get("EXP1_HOME") or DEFAULT_ROOT
        return Path(root).expanduser().resolve()

    def path(self, asset: str, partition: str | None = None) -> Path:
        """The final location of an asset (partition) — stable across runs, so others can find it."""
        return self.base / asset / partition if partition else self.base / asset

    def run_dir(self, asset: str, partition: str | None = None, *, key: str = "") -> Path:
        """Scratch that outlives a run on purpose: resumable checkpoints, specs, logs, error files."""
        parts = [p for p in (asset, partition, key) if p]
        path = self.base.joinpath("runs", *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def prune_run_dirs(self, asset: str, partition: str | None = None, *, current: Path) -> list[Path]:
        """Delete all but the `keep_run_dirs` most recently used run dirs of a partition; return them.

        Every training spec (each seed, learning rate, step count) gets its own run dir holding
        `save_total_limit` full checkpoints (weights + optimizer state), and nothing removed them:
        a sweep filled the disk by ~100 MB per run even for `tiny`. Called after a successful
        commit only: a failed run's checkpoints are what its retry resumes from. Runs under the
        partition's writer lock, so a run writing right now never loses its dir; if another run
        holds the lock, nothing is pruned now (that run prunes when it succeeds).
        """
        if self.keep_run_dirs == 0:
            return []
        parent = self.base.joinpath("runs", *[p for p in (asset, partition) if p])
        final = self.path(asset, partition)
        final.parent.mkdir(parents=True, exist_ok=True)  # where the lock file lives
        try:
            with writer_lock(final, name=f"{asset}[{partition}]" if partition else asset):
                # A dir's mtime changes whenever a checkpoint is added or rotated: "last used".
                others = sorted((d for d in parent.iterdir() if d.is_dir() and d.resolve() != current.resolve()),
                                key=lambda d: d.stat().st_mtime, reverse=True)
                doomed = others[self.keep_run_dirs - 1:]
                for path in doomed:
                    shutil.rmtree(path, ignore_errors=True)
        except Failure:
            return []  # another run is writing this partition
        return doomed

    @contextlib.contextmanager
    def staging(self, asset: str, partition: str | None = None) -> Iterator[Path]:
        """A temp dir beside the final path; renamed into place only if the body succeeds.

        A crash (or a full disk) at any point leaves the previous artifact untouched at its final
        path; the temp dir is removed on failure. The swap is two renames: the old version moves
        aside, the new one moves in, then the old one is deleted.
        """
        final = self.path(asset, partition)
        final.parent.mkdir(parents=True, exist_ok=True)
        with writer_lock(final, name=f"{asset}[{partition}]" if partition else asset):
            # Holding the lock proves no other writer: temp dirs left here were orphaned by a
            # killed process (SIGKILL runs no cleanup) and only cost disk.
            for orphan in final.parent.glob(f".tmp-{final.name}-*"):
                shutil.rmtree(orphan, ignore_errors=True)
            tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
            try:
                tmp.mkdir()
                yield tmp
                commit_dir(tmp, final)
            except BaseException as error:
                shutil.rmtree(tmp, ignore_errors=True)
                if _is_disk_full(error):
                    raise Failure(f"disk full while writing {final}: free space or point EXP1_HOME "
                                  f"elsewhere ({error})", allow_retries=False) from error
                raise


@contextlib.contextmanager
def writer_lock(final: Path, *, name: str) -> Iterator[None]:
    """One writer per artifact: an advisory `flock` on `.lock-<name>` beside the final path.

    A second run for the same asset partition fails fast instead of waiting: it would redo the
    same hours of work only to overwrite the first run's result, and Dagster's run queue and the
    `gpu` pool are the place to serialize runs, not a blocked process holding a worker. The
    kernel drops the lock when the holder dies (even by SIGKILL), so a crash never leaves a
    stale lock. (On NFS, flock maps to fcntl byte-range locks, which lockd serves across nodes.)
    """
    lock_path = final.parent / f".lock-{final.name}"
    handle = open(lock_path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise Failure(f"{name} is being written by another run (pid {holder}); wait for it to "
                          f"finish or cancel it, then rematerialize", allow_retries=False) from None
        try:  # who holds it, for the other run's message; best effort (the disk may be full)
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
        except OSError:
            pass
        yield
    finally:
        handle.close()  # releases the lock


def _is_disk_full(error: BaseException) -> bool:
    """ENOSPC here, or in a launched job (its failure carries the job's message text)."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = getattr(error, "description", None) or ""
    return isinstance(text, str) and "No space left on device" in text


def commit_dir(tmp: Path, final: Path) -> None:
    """Move `tmp` to `final`, replacing what was there (see `ArtifactStore.staging`)."""
    old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
    if final.exists():
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except OSError:
        if old.exists() and not final.exists():
            os.rename(old, final)  # put the previous version back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
