"""Long data steps say how far they are: rows done, rows per second and ETA, in the run's log.

Run on an OpenHermes-2.5-shaped file (bench/make_openhermes_like.py). The lines are asserted, not
their timing: the tests ask for a line after every chunk (`every_s=0`); the assets use 15 s.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from exp1_assets.data.packing import pack_dataset
from exp1_assets.data.sources import ingest_conversations
from exp1_assets.data.specs import SplitSpec
from exp1_assets.data.splits import split_conversations
from exp1_assets.data.tokenizer import train_bpe_tokenizer
from exp1_assets.progress import Progress, ProgressLog

ROWS = 1200
BENCH = Path(__file__).resolve().parents[1] / "bench"
LINE = re.compile(r"^(?P<what>[\w: ]+): (?P<done>[\d,]+)(/(?P<total>[\d,]+))? (?P<unit>\w+)"
                  r"( \((?P<share>\d+)%\))? [\d,]+ (?P=unit)/s( eta=\S+)?$")
DONE = re.compile(r"^(?P<what>[\w: ]+): done, (?P<done>[\d,]+)(/[\d,]+)? (?P<unit>\w+) in \S+ \([\d,]+ (?P=unit)/s\)$")


@pytest.fixture(scope="module")
def openhermes_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = importlib.util.spec_from_file_location("make_openhermes_like", BENCH / "make_openhermes_like.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("openhermes") / "openhermes_like.json"
    module.write_corpus(rows=ROWS, out=out, seed=0)
    return out


def _lines_of(step: str, lines: list[str]) -> tuple[list[re.Match], re.Match]:
    ours = [line for line in lines if line.startswith(step)]
    running = [m for m in map(LINE.match, ours) if m]
    finals = [m for m in map(DONE.match, ours) if m]
    assert len(finals) == 1, ours
    return running, finals[0]


def test_each_long_data_step_reports_rows_rate_and_eta(openhermes_like: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    log = ProgressLog(emit=lines.append, every_s=0.0)
    raw = ingest_conversations(source="local", path=str(openhermes_like), hub_id="", max_samples=None, seed=0,
                               out_dir=tmp_path / "raw", progress=log)
    running, final = _lines_of("raw_conversations: reading", lines)
    assert len(running) == ROWS and final["done"] == f"{ROWS:,}"  # a JSON array's length is unknown: no ETA
    assert raw.rows + raw.quarantined == ROWS

    split = split_conversations(conversations_path=tmp_path / "raw" / "conversations.parquet",
                                out_dir=tmp_path / "splits", spec=SplitSpec(), progress=log)
    for step in ("conversation_splits: planning", "conversation_splits: writing"):
        running, final = _lines_of(step, lines)
        assert running and all(m["total"] == f"{raw.rows:,}" and "eta=" in m.group(0) for m in running)
        assert final["done"] == f"{raw.rows:,}"

    train_rows = split.counts["train"]
    train_bpe_tokenizer(train_path=tmp_path / "splits" / "train.parquet", out_dir=tmp_path / "tok",
                        vocab_size=600, progress=log)
    running, final = _lines_of("tokenizer: counting words", lines)
    assert len(running) == train_rows and running[-1]["share"] == "100"
    assert "tokenizer: learning 600 merges" in lines

    pack_dataset(tokenizer_dir=tmp_path / "tok", splits_dir=tmp_path / "splits", out_dir=tmp_path / "packed",
                 max_length=256, chunk_rows=100, progress=log)
    for name in ("train", "validation"):
        running, final = _lines_of(f"packed_dataset: {name}", lines)
        rows = split.counts[name]
        assert len(running) == -(-rows // 100)  # one line per 100-row chunk
        assert running[-1]["done"] == running[-1]["total"] == f"{rows:,}" and final["done"] == f"{rows:,}"
    assert not [line for line in lines if not (LINE.match(line) or DONE.match(line) or "merges" in line)]


def test_progress_lines_come_at_most_every_interval() -> None:
    now = [0.0]
    lines: list[str] = []
    progress = Progress("packing", total=100, unit="rows", emit=lines.append, every_s=15.0, clock=lambda: now[0])
    for _ in range(100):
        now[0] += 1.0  # one row a second: a line at 15 s, 30 s, ... 90 s
        progress.advance()
    progress.finish()
    assert len(lines) == 100 // 15 + 1
    assert lines[0] == "packing: 15/100 rows (15%) 1 rows/s eta=1m25s"
    assert lines[-1] == "packing: done, 100/100 rows in 1m40s (1 rows/s)"
