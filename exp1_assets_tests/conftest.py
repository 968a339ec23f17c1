"""Shared fixtures: a temp artifact root and a temp Dagster instance per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
os.environ.setdefault("WANDB_MODE", "offline")

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
