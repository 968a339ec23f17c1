"""The artifact store resource: one root directory, deterministic paths, atomic writes.

Large artifacts (corpora, blocks, checkpoints) never pass through Dagster: assets write them here
and hand only small metadata to the event log. On a cluster the root is a shared filesystem, so
the launched jobs (on other nodes) and the code server see the same paths. The paths, staging,
locking and pruning are plain Python (`exp1_assets.storage`); this resource picks the root and
turns the store's errors into `Failure`s that are never retried (a busy artifact or a full disk
stays so for the retry).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from dagster import ConfigurableResource, Failure
from pydantic import Field

from exp1_assets.settings import Settings
from exp1_assets.storage import ArtifactRoot, StoreError



class ArtifactStore(ConfigurableResource):
    """Root of every artifact: `root`, else `$EXP1_HOME`, else `./.exp1_home`."""

    root: Optional[str] = Field(default=None, description="Artifact root; unset: $EXP1_HOME, else ./.exp1_home")
    keep_run_dirs: Optional[int] = Field(
        default=3, ge=1,
        description="Run dirs kept per asset partition after a success (most recently used first, the "
                    "current one always); unset (null) keeps all",
    )

    @property
    def base(self) -> Path:
        if self.root is None:  # read at use, not at import: tests and CLI runs point it elsewhere
            return Settings.from_environ().home
        return Path(self.root).expanduser().resolve()

    def _artifacts(self) -> ArtifactRoot:
        return ArtifactRoot(self.base)

    def path(self, asset: str, partition: str | None = None) -> Path:
        """The final location of an asset (partition) — stable across runs, so others can find it."""
        return self._artifacts().path(asset, partition)

    def checkpoint(self, size: str) -> Path:
        """The `model_checkpoint[size]` folder; a clear error when it holds no model yet."""
        path = self.path("model_checkpoint", size)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} has no model: materialize model_checkpoint[{size}] first")
        return path

    def run_dir(self, asset: str, partition: str | None = None, *, key: str | None = None) -> Path:
        """Scratch that outlives a run on purpose: resumable checkpoints, specs, logs, error files."""
        return self._artifacts().run_dir(asset, partition, key=key)

    def prune_run_dirs(self, asset: str, partition: str | None = None, *, current: Path) -> list[Path]:
        """Delete all but the `keep_run_dirs` most recently used run dirs of a partition; return them.

        Every training spec (each seed, learning rate, step count) gets its own run dir holding
        `save_total_limit` full checkpoints (weights + optimizer state), and nothing removed them:
        a sweep filled the disk by ~100 MB per run even for `tiny`. Called after a successful
        commit only: a failed run's checkpoints are what its retry resumes from.
        """
        if self.keep_run_dirs is None:
            return []
        return self._artifacts().prune_run_dirs(asset, partition, current=current, keep=self.keep_run_dirs)

    @contextlib.contextmanager
    def staging(self, asset: str, partition: str | None = None) -> Iterator[Path]:
        """A temp dir beside the final path; renamed into place only if the body succeeds.

        A crash (or a full disk) at any point leaves the previous artifact untouched at its final
        path. Another run writing the same artifact, or a full disk, fails without retry.
        """
        try:
            with self._artifacts().staging(asset, partition) as tmp:
                yield tmp
        except StoreError as error:
            raise Failure(str(error), allow_retries=False) from error
