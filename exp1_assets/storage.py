"""Artifacts on disk: deterministic paths under one root, atomic writes, one writer at a time.

Large artifacts (corpora, blocks, checkpoints) live at `<root>/<asset>[/<partition>]`; scratch
that outlives a run (resumable checkpoints, specs, logs, error files) at
`<root>/runs/<asset>[/<partition>][/<key>]`. A write goes to a temp dir beside the final path and
is renamed into place only if it succeeded, under an advisory lock that admits one writer per
artifact. Errors are this module's own (`StoreError`): `ArtifactBusy`, `DiskFull`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


class StoreError(Exception):
    """Base of the artifact store's errors; none of them goes away by retrying the same run."""


class ArtifactBusy(StoreError):
    """Another process holds the artifact's writer lock."""

    def __init__(self, name: str, *, holder: str) -> None:
        super().__init__(f"{name} is being written by another run (pid {holder}); wait for it to "
                         f"finish or cancel it, then rematerialize")
        self.name = name
        self.holder = holder


class DiskFull(StoreError):
    """The disk (or quota) filled up while an artifact was being written; the old one is intact."""

    def __init__(self, final: Path, *, cause: BaseException) -> None:
        super().__init__(f"disk full while writing {final}: free space or point EXP1_HOME "
                         f"elsewhere ({cause})")
        self.final = final
        self.cause = cause


def artifact_name(asset: str, partition: str | None = None) -> str:
    """How messages name an artifact.

    >>> artifact_name("model_checkpoint", "1.5B"), artifact_name("tokenizer")
    ('model_checkpoint[1.5B]', 'tokenizer')
    """
    return f"{asset}[{partition}]" if partition else asset


@dataclasses.dataclass(frozen=True)
class ArtifactRoot:
    """One artifact root: where each artifact and its run dirs live, and how they are written."""

    base: Path
    """The root directory, absolute (a shared filesystem on a cluster)."""

    def __post_init__(self) -> None:
        if not self.base.is_absolute():
            raise ValueError(f"ArtifactRoot.base: {self.base} is not an absolute path")

    def path(self, asset: str, partition: str | None = None) -> Path:
        """The final location of an asset (partition): stable across runs, so others can find it.

        >>> ArtifactRoot(Path("/data")).path("model_checkpoint", "tiny")
        PosixPath('/data/model_checkpoint/tiny')
        """
        return self.base / asset / partition if partition else self.base / asset

    def runs(self, asset: str, partition: str | None = None) -> Path:
        """The parent of an asset (partition)'s run dirs."""
        return self.base.joinpath("runs", *[p for p in (asset, partition) if p])

    def run_dir(self, asset: str, partition: str | None = None, *, key: str | None = None) -> Path:
        """Scratch that outlives a run on purpose (created): checkpoints, specs, logs, error files."""
        path = self.runs(asset, partition) / key if key else self.runs(asset, partition)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def prune_run_dirs(self, asset: str, partition: str | None = None, *, current: Path, keep: int) -> list[Path]:
        """Delete all but the `keep` most recently used run dirs (counting `current`); return them.

        Runs under the partition's writer lock, so a run writing right now never loses its dir;
        if another run holds the lock, nothing is pruned now (that run prunes when it succeeds).
        """
        if keep < 1:
            raise ValueError(f"prune_run_dirs: keep={keep} must be at least 1 (the current run dir)")
        parent = self.runs(asset, partition)
        final = self.path(asset, partition)
        final.parent.mkdir(parents=True, exist_ok=True)  # where the lock file lives
        try:
            with writer_lock(final, name=artifact_name(asset, partition)):
                # A dir's mtime changes whenever a checkpoint is added or rotated: "last used".
                others = sorted((d for d in parent.iterdir() if d.is_dir() and d.resolve() != current.resolve()),
                                key=lambda d: d.stat().st_mtime, reverse=True)
                doomed = others[keep - 1:]
                for path in doomed:
                    shutil.rmtree(path, ignore_errors=True)
        except ArtifactBusy:
            return []  # another run is writing this partition
        return doomed

    @contextlib.contextmanager
    def staging(self, asset: str, partition: str | None = None) -> Iterator[Path]:
        """A temp dir beside the final path; renamed into place only if the body succeeds.

        A crash (or a full disk) at any point leaves the previous artifact untouched at its final
        path; the temp dir is removed on failure. The swap is two renames: the old version moves
        aside, the new one moves in, then the old one is deleted. Raises `ArtifactBusy` before the
        body runs if another process writes this artifact, `DiskFull` if the disk filled up.
        """
        final = self.path(asset, partition)
        final.parent.mkdir(parents=True, exist_ok=True)
        with writer_lock(final, name=artifact_name(asset, partition)):
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
                if is_disk_full(error):
                    raise DiskFull(final, cause=error) from error
                raise


@contextlib.contextmanager
def writer_lock(final: Path, *, name: str) -> Iterator[None]:
    """One writer per artifact: an advisory `flock` on `.lock-<name>` beside the final path.

    A second run for the same asset partition fails fast (`ArtifactBusy`) instead of waiting: it
    would redo the same hours of work only to overwrite the first run's result, and Dagster's run
    queue and the `gpu` pool are the place to serialize runs, not a blocked process holding a
    worker. The kernel drops the lock when the holder dies (even by SIGKILL), so a crash never
    leaves a stale lock. (On NFS, flock maps to fcntl byte-range locks, which lockd serves across
    nodes.)
    """
    lock_path = final.parent / f".lock-{final.name}"
    handle = open(lock_path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise ArtifactBusy(name, holder=handle.read().strip() or "unknown") from None
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


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC/EDQUOT here, or in a launched job (its failure's `description` carries the job's text).

    >>> is_disk_full(OSError(errno.ENOSPC, "No space left on device")), is_disk_full(ValueError("x"))
    (True, False)
    """
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = getattr(error, "description", None) or ""
    return isinstance(text, str) and "No space left on device" in text


def commit_dir(tmp: Path, final: Path) -> None:
    """Move `tmp` to `final`, replacing what was there (see `ArtifactRoot.staging`)."""
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
