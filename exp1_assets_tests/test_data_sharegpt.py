"""ShareGPT-style chat files: assistant-first parts kept as untrained context, role aliases,
custom role maps, broken rows quarantined with exact counts, OpenHermes rows unchanged."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exp1_assets.data.chat import IM_END, render_chatml
from exp1_assets.data.packing import IGNORE_INDEX, pack_split
from exp1_assets.data.sources import ingest_conversations
from exp1_assets.data.tokenizer import train_bpe_tokenizer

# The data_version of `openhermes_rows()` as ingested before ShareGPT-style data was accepted:
# the content hash of the kept rows, so any change to how such rows normalize changes it.
OPENHERMES_DATA_VERSION = "f8f3e035176a6f1616c61f9efb8af0b5ec814ff79a7672301affff2da2651751"


def t(role, value) -> dict:
    """A ShareGPT turn (no `weight` column, unlike OpenHermes)."""
    return {"from": role, "value": value}


def sharegpt_rows() -> list:
    """Six rows to keep, then eight broken ones; ids follow ShareGPT's `<chat>_<part>` naming."""
    rows = [
        {"id": "aa_0", "conversations": [t("human", "How do tides work?"), t("gpt", "The moon pulls the sea.")]},
        {"id": "aa_1", "conversations": [t("gpt", "...so that is why tides rise twice a day."),
                                         t("human", "And spring tides?"), t("gpt", "Sun and moon align.")]},
        {"id": "bb_1", "conversations": [t("chatgpt", "Here is the rest of the list: pears, plums."),
                                         t("human", "Thanks. Any more?"), t("chatgpt", "Figs.")]},
        {"id": "cc_0", "conversations": [t("user", "Write a haiku."), t("bing", "Leaves fall / quiet pond")]},
        {"id": "dd_0", "conversations": [t(" HUMAN ", "Capital of Peru?"), t("Bard", "Lima.")]},
        {"id": "ee_2", "conversations": [t("system", "You are a tutor."), t("gpt", "...and that ends the proof."),
                                         t("human", "Summarize it"), t("gpt", "Odd squares are odd.")]},
        # broken:
        {"id": "ff_3", "conversations": [t("gpt", "A last part with only the assistant.")]},     # no_assistant_reply
        {"id": "gg_1", "conversations": [t("gpt", "...done."), t("human", "ok, bye")]},          # no_assistant_reply
        {"id": "hh_0", "conversations": [t("human", "Anyone there?")]},                          # no_assistant_turn
        {"id": "ii_0", "conversations": [t("human", "Run it"), t("tool", "{}"), t("gpt", "Done")]},  # unknown_role
        {"id": "jj_0", "conversations": [t("human", "Hi"), t("gpt", "  ")]},                     # empty_value
        {"id": "kk_0", "conversations": [t("human", "Hi"), t("gpt", None)]},                     # non_string_value
        {"id": "ll_0", "conversations": []},                                                     # missing_conversations
    ]
    return rows + [{"id": "aa_1-copy", "conversations": rows[1]["conversations"]}]               # duplicate


KEPT_IDS = ["aa_0", "aa_1", "bb_1", "cc_0", "dd_0", "ee_2"]
KEPT_ROLES = [["user", "assistant"], ["assistant", "user", "assistant"], ["assistant", "user", "assistant"],
              ["user", "assistant"], ["user", "assistant"], ["system", "assistant", "user", "assistant"]]
REASONS_BY_ROW = {6: "no_assistant_reply", 7: "no_assistant_reply", 8: "no_assistant_turn", 9: "unknown_role",
                  10: "empty_value", 11: "non_string_value", 12: "missing_conversations", 13: "duplicate"}


def write(path: Path, rows: list) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        path.write_text(json.dumps(rows, indent=1))  # a JSON array, as ShareGPT dumps ship
    return path


def ingest(path: Path, out: Path, **options):
    return ingest_conversations(source="local", path=str(path), hub_id="", max_samples=None, seed=0,
                                out_dir=out, **options)


def kept(out: Path) -> list[dict]:
    return pq.read_table(out / "conversations.parquet").to_pylist()


@pytest.mark.parametrize("name", ["sharegpt.jsonl", "sharegpt.json"])
def test_assistant_first_parts_and_alias_roles_are_kept_broken_rows_counted(tmp_path, name):
    path = write(tmp_path / name, sharegpt_rows())
    result = ingest(path, tmp_path / "out")

    assert (result.input_rows, result.rows, result.quarantined) == (14, 6, 8)
    assert result.quarantine_reasons == {"duplicate": 1, "empty_value": 1, "missing_conversations": 1,
                                         "no_assistant_reply": 2, "no_assistant_turn": 1,
                                         "non_string_value": 1, "unknown_role": 1}
    rows = kept(tmp_path / "out")
    assert [r["id"] for r in rows] == KEPT_IDS and [r["row"] for r in rows] == list(range(6))
    assert [[m["role"] for m in r["messages"]] for r in rows] == KEPT_ROLES
    assert rows[1]["messages"][0]["content"] == "...so that is why tides rise twice a day."
    quarantine = [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").open()]
    assert {q["row"]: q["reason"] for q in quarantine} == REASONS_BY_ROW
    assert quarantine[0]["detail"] == "no assistant turn after a user turn: roles ['assistant']"
    assert quarantine[3]["detail"] == "turn 1: role 'tool'"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["leading_assistant"], summary["role_aliases"], summary["replace_default_roles"]) == (
        "keep", None, False)


def test_quarantining_leading_assistant_restores_the_strict_rule(tmp_path):
    path = write(tmp_path / "sharegpt.jsonl", sharegpt_rows())
    result = ingest(path, tmp_path / "out", leading_assistant="quarantine")
    # aa_1, bb_1, ee_2, ff_3, gg_1 and aa_1's copy (its original was not kept, so it is no duplicate).
    assert (result.rows, result.quarantined) == (3, 11)
    assert result.quarantine_reasons == {"bad_first_turn": 6, "empty_value": 1, "missing_conversations": 1,
                                         "no_assistant_turn": 1, "non_string_value": 1, "unknown_role": 1}
    assert [r["id"] for r in kept(tmp_path / "out")] == ["aa_0", "cc_0", "dd_0"]


def test_custom_role_aliases_extend_or_replace_the_defaults(tmp_path):
    rows = [
        {"conversations": [t("Teacher", "Solve x+1=3"), t("claude", "x = 2")]},
        {"conversations": [t("human", "Hi"), t("gpt", "Hello")]},
        {"conversations": [t("student", "What is 2+2?"), t("tutor", "4")]},
    ]
    path = write(tmp_path / "custom.jsonl", rows)

    default = ingest(path, tmp_path / "default")
    assert (default.rows, default.quarantine_reasons) == (1, {"unknown_role": 2})

    extended = ingest(path, tmp_path / "extended",
                      role_aliases={"Teacher": "user", "CLAUDE": "assistant", "student": "user", "tutor": "assistant"})
    assert (extended.rows, extended.quarantined) == (3, 0)
    assert [[m["role"] for m in r["messages"]] for r in kept(tmp_path / "extended")] == [["user", "assistant"]] * 3

    replaced = ingest(path, tmp_path / "replaced", role_aliases={"student": "user", "tutor": "assistant"},
                      replace_default_roles=True)
    assert (replaced.rows, replaced.quarantine_reasons) == (1, {"unknown_role": 2})
    assert kept(tmp_path / "replaced")[0]["messages"][1]["content"] == "4"
    summary = json.loads((tmp_path / "replaced" / "summary.json").read_text())
    assert summary["role_aliases"] == {"student": "user", "tutor": "assistant"} and summary["replace_default_roles"]

    # A given alias wins over a default one: with human/gpt swapped, row 1 answers no user turn.
    flipped = ingest(path, tmp_path / "flipped",
                     role_aliases={"gpt": "user", "human": "assistant", "teacher": "user", "claude": "assistant"})
    assert (flipped.rows, flipped.quarantine_reasons) == (1, {"no_assistant_reply": 1, "unknown_role": 1})


# ---- packing: the leading assistant turn is context, not a target ----------------------------

@pytest.fixture(scope="module")
def packed_inputs(tmp_path_factory):
    """The kept ShareGPT conversations and a small BPE tokenizer trained on them."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("sharegpt")
    ingest(write(root / "sharegpt.jsonl", sharegpt_rows()), root / "raw")
    conversations = root / "conversations.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": r["messages"]} for r in kept(root / "raw")]), conversations)
    train_bpe_tokenizer(train_path=conversations, out_dir=root / "tokenizer", vocab_size=300, min_frequency=1)
    return conversations, AutoTokenizer.from_pretrained(root / "tokenizer")


def packed_documents(path: Path, pad_token_id: int) -> dict[tuple, np.ndarray]:
    """{input ids of one packed conversation: its labels}, cutting blocks where positions restart."""
    from datasets import Dataset

    documents = {}
    for block in Dataset.from_file(str(path)):
        positions = block["position_ids"]
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
        for a, b in zip(starts, starts[1:]):
            ids = tuple(block["input_ids"][a:b])
            if set(ids) != {pad_token_id}:  # the filler at a block's end is no conversation
                documents[ids] = np.asarray(block["labels"][a:b])
    return documents


def turn_token_ranges(tokenizer, messages) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of the rendered chat, and per message the token range of its content + <|im_end|>."""
    text = render_chatml(messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ranges, cursor = [], 0
    for message in messages:
        start = text.index(message["content"] + IM_END, cursor)
        end = start + len(message["content"] + IM_END)
        inside = [i for i, (s, e) in enumerate(encoded["offset_mapping"]) if start <= s and e <= end]
        ranges.append((inside[0], inside[-1] + 1))
        cursor = end
    return encoded["input_ids"], ranges


@pytest.mark.parametrize("train_on_leading_assistant", [False, True])
def test_packed_labels_mask_the_leading_assistant_turn_unless_asked(packed_inputs, tmp_path, train_on_leading_assistant):
    conversations, tokenizer = packed_inputs
    stats = pack_split(tokenizer=tokenizer, conversations_path=conversations, out_path=tmp_path / "train.arrow",
                       max_length=256, train_on_leading_assistant=train_on_leading_assistant)
    documents = packed_documents(tmp_path / "train.arrow", tokenizer.pad_token_id)
    chats = pq.read_table(conversations).column("messages").to_pylist()
    assert stats.conversations == len(documents) == len(chats) == 6

    expected_loss_tokens, leading_turns = 0, 0
    for messages in chats:
        ids, ranges = turn_token_ranges(tokenizer, messages)
        labels = documents[tuple(ids)]
        first_user = [m["role"] for m in messages].index("user")
        trained_tokens = 0
        for index, (message, (start, end)) in enumerate(zip(messages, ranges)):
            leading_turns += message["role"] == "assistant" and index < first_user
            if message["role"] == "assistant" and (index > first_user or train_on_leading_assistant):
                assert labels[start:end].tolist() == ids[start:end], (messages, index)
                trained_tokens += end - start
            else:
                assert (labels[start:end] == IGNORE_INDEX).all(), (messages, index)
        assert (labels != IGNORE_INDEX).sum() == trained_tokens  # headers, prompts, newlines: never
        expected_loss_tokens += trained_tokens
    assert leading_turns == 3
    assert stats.loss_tokens == expected_loss_tokens


def test_evaluation_prompt_of_an_assistant_first_conversation_keeps_the_context(packed_inputs, tmp_path):
    from exp1_assets.evaluation.evaluate_job import load_test_rows

    conversations, _ = packed_inputs
    table = pq.read_table(conversations).to_pylist()
    pq.write_table(pa.Table.from_pylist([{"id": f"c{i}", **row} for i, row in enumerate(table)]), tmp_path / "test.parquet")
    pairs = load_test_rows(str(tmp_path / "test.parquet"), num_samples=10, seed=0)
    assert [p["id"] for p in pairs] == [f"c{i}" for i in range(6)]
    part_two = pairs[1]
    assert [m["role"] for m in part_two["prompt_messages"]] == ["assistant", "user"]
    assert part_two["reference"] == "Sun and moon align."


# ---- OpenHermes-shaped data: unchanged ----------------------------------------------------------

def openhermes_rows() -> list[dict]:
    def turn(role, value):
        return {"from": role, "value": value, "weight": None}

    base = {"system_prompt": None, "source": None, "category": None, "id": None, "idx": None, "hash": None,
            "avatarUrl": None, "model": None, "title": None, "topic": None, "views": None, "language": None,
            "custom_instruction": None, "model_name": None, "skip_prompt_formatting": None}
    return [
        base | {"conversations": [turn("human", "What is 2 + 3?"), turn("gpt", "2 + 3 = 5.")], "source": "airoboros2.2",
                "category": "orca"},
        base | {"conversations": [turn("system", "Be brief."), turn("human", "Hi"), turn("gpt", " Hello! ")], "id": "x1"},
        base | {"conversations": [turn("human", "Name a color."), turn("gpt", "Blue.")], "system_prompt": "Answer."},
        base | {"conversations": [turn("human", "Q1"), turn("gpt", "A1"), turn("human", "Q2"), turn("gpt", "A2")],
                "hash": "h3"},
        base | {"conversations": [turn("human", "Q only")]},
        base | {"conversations": [turn("human", "Q"), turn("robot", "beep")]},
        base | {"conversations": [turn("human", "What is 2 + 3?"), turn("gpt", "2 + 3 = 5.")]},
    ]


def test_openhermes_file_ingests_exactly_as_before(tmp_path):
    path = write(tmp_path / "openhermes2_5.json", openhermes_rows())
    outputs = {}
    for mode in ("keep", "quarantine"):
        result = ingest(path, tmp_path / mode, leading_assistant=mode)
        assert (result.rows, result.quarantine_reasons) == (4, {"duplicate": 1, "no_assistant_turn": 1,
                                                                "unknown_role": 1})
        assert result.data_version == OPENHERMES_DATA_VERSION
        outputs[mode] = ((tmp_path / mode / "conversations.parquet").read_bytes(),
                         (tmp_path / mode / "quarantine.jsonl").read_text())
    assert outputs["keep"] == outputs["quarantine"]
