"""The Pipes message reader never parses half a line, however the job's writes are split."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from exp1_assets.defs.pipes_reader import WholeLineFileMessageReader, complete_lines


class RecordingHandler:
    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.exceptions: list[object] = []

    def handle_message(self, message: dict) -> None:
        self.messages.append(message)

    def report_pipes_framework_exception(self, origin: str, exc_info: object) -> None:
        self.exceptions.append((origin, exc_info))


def test_a_message_written_in_pieces_arrives_whole(tmp_path: Path) -> None:
    path = tmp_path / "messages.jsonl"
    big = {"__dagster_pipes_version": "0.1", "method": "report_asset_materialization",
           "params": {"metadata": {"loss_curve": "x" * 50_000}}}
    line = json.dumps(big) + "\n"
    reader = WholeLineFileMessageReader(str(path))
    handler = RecordingHandler()
    with reader.read_messages(handler) as params:
        assert params["path"] == str(path)
        with open(path, "a", encoding="utf-8") as sink:
            for start in range(0, len(line), 7_000):  # a buffered writer's separate write() calls
                sink.write(line[start:start + 7_000])
                sink.flush()
                time.sleep(0.03)  # the reader sees the file end mid-message several times
            sink.write(json.dumps({"method": "log", "params": {"message": "after"}}) + "\n")
            sink.flush()
        time.sleep(0.1)
    assert handler.exceptions == []
    assert handler.messages == [big, {"method": "log", "params": {"message": "after"}}]
    assert not path.exists()  # cleaned up like Dagster's reader


def test_an_unfinished_last_line_is_dropped_when_the_session_closes(tmp_path: Path) -> None:
    path = tmp_path / "messages.jsonl"
    path.write_text('{"method": "log"}\n{"method": "report_asset_mat')  # the job was killed mid-write
    stop = threading.Event()
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    assert list(complete_lines(str(path), should_stop=stop.is_set)) == ['{"method": "log"}\n']
