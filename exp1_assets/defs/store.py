"""The artifact store: one root directory, deterministic paths, atomic writes.

Large artifacts (corpora, blocks, checkpoints) never pass through Dagster: assets write them here
and hand only small metadata to the event log. On a cluster the root is a shared filesystem, so
the launched jobs (on other nodes) and the code server see the same paths.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

DEFAULT_ROOT = ".exp1_home"  # under the working directory; git ignores it


class ArtifactStore(ConfigurableResource):
    """Root of every artifact: `root`, else `$EXP1_HOME`, else `./.exp1_home`."""

    root: str = Field(default="", description="Artifact root; empty means $EXP1_HOME or ./.exp1_home")

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

    @contextlib.contextmanager
    def staging(self, asset: str, partition: str | None = None) -> Iterator[Path]:
        """A temp dir beside the final path; renamed into place only if the body succeeds.

        A crash (or a full disk) at any point leaves the previous artifact untouched at its final
        path; the temp dir is removed on failure. The swap is two renames: the old version moves
        aside, the new one moves in, then the old one is deleted.
        """
        final = self.path(asset, partition)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        commit_dir(tmp, final)


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
