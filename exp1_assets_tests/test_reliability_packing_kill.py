"""SIGKILL while packing: nothing half-written at the final path, and the next run succeeds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from exp1_assets_tests.cli_run import start_materialize
from exp1_assets_tests.run_configs import fast_run_config, only
from exp1_assets_tests.test_graph import DATA

pytestmark = pytest.mark.slow



def _materialize(home: Path, tmp_path: Path, config: dict, *assets: str) -> subprocess.Popen:
    return start_materialize(exp1_home=home, tmp_path=tmp_path, select=",".join(assets), config=only(config, *assets),
                             partition=None, quiet=True, new_session=True)


def test_sigkill_during_packing_leaves_the_previous_blocks_and_the_next_run_succeeds(tmp_path: Path,
                                                                                    data_home: Path) -> None:
    home = tmp_path / "exp1_home"
    shutil.copytree(data_home, home)  # a previous run's data assets (the FAST config's small corpus)
    before = (home / "packed_dataset" / "train.arrow").read_bytes()

    # A bigger corpus so that packing lasts long enough to be caught in the act (the tokenizer
    # learns from as many conversations as before: only packing needs all 20,000).
    big = fast_run_config(builtin_size=20_000)
    big["ops"]["tokenizer"]["config"]["sample_rows"] = 1500
    big["ops"]["packed_dataset"]["config"]["chunk_rows"] = 500
    proc = _materialize(home, tmp_path, big, *DATA)
    deadline = time.time() + 300
    while not list(home.glob(".tmp-packed_dataset-*/train.arrow*")):
        assert proc.poll() is None, "the run ended before packing was caught"
        assert time.time() < deadline, "packing never started"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process tree, as a lost node would
    proc.wait(timeout=30)

    assert (home / "packed_dataset" / "train.arrow").read_bytes() == before  # untouched
    assert list(home.glob(".tmp-packed_dataset-*"))  # the killed writer could not clean up...
    # The failed step again: it packs the big corpus's splits and tokenizer, which the killed run
    # committed before packing began.
    assert _materialize(home, tmp_path, big, "packed_dataset").wait(timeout=600) == 0
    assert not list(home.glob(".tmp-*"))  # ...the next writer, holding the lock, did
    meta = json.loads((home / "packed_dataset" / "meta.json").read_text())
    assert meta["splits"]["train"]["conversations"] > 10_000
