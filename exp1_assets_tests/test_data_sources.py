"""Ingest: every accepted source format, exact kept/quarantined counts, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exp1_assets.data.conversation import REASONS
from exp1_assets.data.sources import ingest_conversations

MAX_CHARS = 200


def turn(role, value):
    return {"from": role, "value": value, "weight": None}


def good_rows() -> list[dict]:
    """Four valid rows in the shapes OpenHermes and friends use."""
    return [
        {"conversations": [turn("human", "What is 2 + 3?"), turn("gpt", "2 + 3 = 5.")],
         "system_prompt": None, "source": "airoboros2.2", "category": "orca", "id": None},
        {"conversations": [turn("system", "Be brief."), turn("human", "Hi"), turn("gpt", "Hello!")],
         "system_prompt": "", "source": None, "category": None, "id": "abc"},
        {"conversations": [{"role": "user", "content": "Name a color."},
                           {"role": "assistant", "content": "Blue."}], "system_prompt": "Answer."},
        {"instruction": "Translate to French:", "input": "cat", "output": "chat"},
    ]


# With the default leading_assistant="keep" no row is a `bad_first_turn`; with "quarantine" no row
# reaches the `no_assistant_reply` test (an assistant-first row fails earlier).
ONLY_WHEN_QUARANTINING_LEADING = "bad_first_turn"
ONLY_WHEN_KEEPING_LEADING = "no_assistant_reply"


def bad_rows() -> list:
    """One row per JSON-representable quarantine reason (no 'undecodable'); see above for the 6th."""
    return [
        {"conversations": None, "source": "x"},                                    # missing_conversations
        {"conversations": [turn("robot", "beep"), turn("gpt", "ok")]},             # unknown_role
        {"conversations": [turn("human", "   "), turn("gpt", "ok")]},              # empty_value
        {"conversations": [turn("human", 42), turn("gpt", "ok")]},                 # non_string_value
        {"conversations": [turn("human", "only a question")]},                     # no_assistant_turn
        {"conversations": [turn("gpt", "I start"), turn("human", "odd")]},         # no_assistant_reply / bad_first_turn
        {"conversations": [turn("human", "x" * 300), turn("gpt", "long")]},        # too_long
        {"conversations": [turn("human", "What is 2 + 3?"), turn("gpt", "2 + 3 = 5.")]},  # duplicate
        [1, 2, 3],                                                                  # not_an_object
    ]


def write_jsonl(path: Path, rows: list, extra_lines: list[bytes] = ()) -> Path:
    with open(path, "wb") as handle:
        for row in rows:
            handle.write(json.dumps(row).encode() + b"\n")
        for line in extra_lines:
            handle.write(line + b"\n")
    return path


def ingest(tmp_path: Path, path, **kwargs):
    defaults = dict(source="local", path=str(path), hub_id="unused", max_samples=None, seed=0,
                    out_dir=tmp_path / "out", max_chars=MAX_CHARS)
    return ingest_conversations(**(defaults | kwargs))


@pytest.mark.parametrize(("leading_assistant", "absent"), [("keep", ONLY_WHEN_QUARANTINING_LEADING),
                                                           ("quarantine", ONLY_WHEN_KEEPING_LEADING)])
def test_jsonl_one_row_of_every_bad_kind(tmp_path, leading_assistant, absent):
    path = write_jsonl(tmp_path / "data.jsonl", good_rows() + bad_rows(), [b'{"broken": '])
    result = ingest(tmp_path, path, leading_assistant=leading_assistant)

    assert (result.rows, result.quarantined, result.input_rows) == (4, 10, 14)
    assert result.quarantine_reasons == {reason: 1 for reason in REASONS if reason != absent}
    table = pq.read_table(tmp_path / "out" / "conversations.parquet").to_pylist()
    assert [r["row"] for r in table] == [0, 1, 2, 3]
    assert [r["id"] for r in table] == ["row-0", "abc", "row-2", "row-3"]
    assert [r["source"] for r in table] == ["airoboros2.2", "unknown", "unknown", "unknown"]
    assert [[m["role"] for m in r["messages"]] for r in table] == [
        ["user", "assistant"], ["system", "user", "assistant"],
        ["system", "user", "assistant"], ["user", "assistant"]]
    assert table[3]["messages"][0]["content"] == "Translate to French:\n\ncat"
    quarantine = [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").open()]
    assert [q["row"] for q in quarantine] == list(range(4, 14))
    assert {q["file"] for q in quarantine} == {str(path)}
    assert quarantine[1]["detail"] == "turn 0: role 'robot'"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rows"] == 4 and summary["data_version"] == result.data_version


def test_non_utf8_line_is_undecodable(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", good_rows()[:1], [b'{"a": "\xff\xfe"}', b""])
    result = ingest(tmp_path, path)
    assert (result.rows, result.quarantine_reasons) == (1, {"undecodable": 1})


def test_json_array_streamed(tmp_path):
    path = tmp_path / "openhermes2_5.json"
    path.write_text(json.dumps(good_rows() + bad_rows(), indent=1))
    result = ingest(tmp_path, path)
    assert (result.rows, result.quarantined) == (4, 9)
    assert result.quarantine_reasons == {r: 1 for r in REASONS if r not in ("undecodable", ONLY_WHEN_QUARANTINING_LEADING)}


def test_json_file_holding_json_lines(tmp_path):
    path = write_jsonl(tmp_path / "lines.json", good_rows())
    assert ingest(tmp_path, path).rows == 4


def test_parquet(tmp_path):
    # Parquet needs one schema: the rows whose turns are all {from, value: str, weight}.
    rows = good_rows()[:2] + [bad_rows()[i] for i in (0, 1, 2, 4, 5, 6, 7)]
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist([{"conversations": r["conversations"]} for r in rows]), path)
    result = ingest(tmp_path, path)
    assert (result.rows, result.quarantined) == (2, 7)
    assert result.quarantine_reasons == {r: 1 for r in REASONS if r not in (
        "undecodable", "not_an_object", "non_string_value", ONLY_WHEN_QUARANTINING_LEADING)}


def test_save_to_disk_folder(tmp_path):
    from datasets import Dataset

    rows = [{"conversations": r["conversations"], "id": f"c{i}"}
            for i, r in enumerate(good_rows()[:2] + bad_rows()[1:3])]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    result = ingest(tmp_path, tmp_path / "saved")
    assert (result.rows, result.quarantine_reasons) == (2, {"empty_value": 1, "unknown_role": 1})
    assert [p["id"] for p in result.preview] == ["c0", "c1"]


def test_glob_over_two_files_and_max_samples(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", good_rows()[:2])
    write_jsonl(tmp_path / "b.jsonl", good_rows()[2:] + bad_rows()[:1])
    result = ingest(tmp_path, tmp_path / "*.jsonl")
    assert result.files == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    assert (result.rows, result.quarantined, result.input_rows) == (4, 1, 5)
    capped = ingest(tmp_path, tmp_path / "*.jsonl", max_samples=3, out_dir=tmp_path / "capped")
    assert (capped.rows, capped.quarantined, capped.input_rows) == (3, 0, 3)


def test_all_bad_file_names_file_and_first_bad_row(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", bad_rows()[1:4])
    with pytest.raises(ValueError, match=r"bad\.jsonl: all 3 rows .* first bad row 0: unknown_role"):
        ingest(tmp_path, path)


@pytest.mark.parametrize("name", ["missing.jsonl", "*.nothing", "data.csv"])
def test_bad_paths_are_named(tmp_path, name):
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=name.replace("*", r"\*").replace(".", r"\.")):
        ingest(tmp_path, tmp_path / name)


def test_builtin_source_counts_add_up(tmp_path):
    result = ingest_conversations(source="builtin", path=None, hub_id="unused", max_samples=500,
                                  seed=3, out_dir=tmp_path / "out")
    assert result.input_rows == 500 and result.rows + result.quarantined == 500
    assert set(result.quarantine_reasons) <= {"duplicate"}
    assert pq.read_metadata(tmp_path / "out" / "conversations.parquet").num_rows == result.rows


def test_hub_offline_error_is_short_and_helpful(tmp_path):
    # A subprocess: HF_HUB_OFFLINE is read when huggingface_hub is imported, and a timeout
    # keeps a misconfigured network from hanging the suite.
    code = ("from exp1_assets.data.sources import ingest_conversations\n"
            f"ingest_conversations(source='hub', path=None, hub_id='teknium/OpenHermes-2.5', "
            f"max_samples=5, seed=0, out_dir={str(tmp_path)!r})\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1],
                          env=os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    last_line = done.stderr.strip().splitlines()[-1]
    assert done.returncode != 0
    assert last_line.startswith("exp1_assets.data.sources.HubUnavailableError: could not load "
                                "'teknium/OpenHermes-2.5' from the Hugging Face Hub (")
    assert "source='local'" in last_line and "source='builtin'" in last_line
    assert "During handling" not in done.stderr  # no chained stack trace
