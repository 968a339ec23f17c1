"""`dagster asset materialize` in a child process, as an operator runs it (for kill and cancel tests)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

from exp1_assets_tests.dagster_dev import BIN, REPO, make_dagster_home, restore_default_signals


def start_materialize(
    *, exp1_home: Path, tmp_path: Path, select: str, config: dict[str, Any], partition: str | None = "tiny",
    defs_file: Path | None = None, extra_env: dict[str, str] | None = None, quiet: bool = False,
    new_session: bool = False,
) -> subprocess.Popen:
    """Start the CLI against a DAGSTER_HOME in `tmp_path`; output piped (or discarded if `quiet`)."""
    dagster_home = make_dagster_home(tmp_path / "dagster_home")
    config_file = tmp_path / f"run-{uuid.uuid4().hex[:8]}.json"
    config_file.write_text(json.dumps(config))
    target = ["-f", str(defs_file)] if defs_file else ["-m", "exp1_assets.definitions"]
    cmd = [str(BIN / "dagster"), "asset", "materialize", *target, "--select", select, "--config", str(config_file)]
    if partition:
        cmd += ["--partition", partition]
    env = {**os.environ, "EXP1_HOME": str(exp1_home), "DAGSTER_HOME": str(dagster_home), **(extra_env or {})}
    output = subprocess.DEVNULL if quiet else subprocess.PIPE
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
                            start_new_session=new_session, preexec_fn=restore_default_signals)
