"""Shared fixtures: a temp artifact root and a temp Dagster instance per test, and the FAST data once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
os.environ.setdefault("WANDB_MODE", "offline")
# A killed training run is retried after 0.5 s, not 5 s: the kill/resume tests wait for nothing real.
os.environ.setdefault("EXP1_TRAIN_RETRY_DELAY_S", "0.5")

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture
def exp1_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "exp1_home"
    home.mkdir()
    monkeypatch.setenv("EXP1_HOME", str(home))
    return home


@pytest.fixture
def dagster_instance(tmp_path: Path):
    from dagster import DagsterInstance

    with DagsterInstance.ephemeral(tempdir=str(tmp_path / "dagster_home")) as instance:
        yield instance


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave what a person may want to look at (screenshots, reports)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def data_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An EXP1_HOME holding the data assets of the FAST config (`fast_run_config()`), made once per session.

    Read-only: a test that trains or re-packs copies it first (`shutil.copytree`). Shared by the
    launcher, kill, load and Slurm modules, which would otherwise each build the same data.
    """
    from dagster import DagsterInstance, materialize

    from exp1_assets.defs.launcher import JobLauncher
    from exp1_assets.defs.store import ArtifactStore
    from exp1_assets_tests.run_configs import fast_run_config, only
    from exp1_assets_tests.test_graph import DATA, _assets

    home = tmp_path_factory.mktemp("exp1_data")
    with DagsterInstance.ephemeral() as instance:
        result = materialize(_assets(*DATA), instance=instance, run_config=only(fast_run_config(), *DATA),
                             resources={"store": ArtifactStore(root=str(home)), "launcher": JobLauncher()})
    assert result.success
    return home
