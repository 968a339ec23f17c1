"""Packing invariants: every token once, labels exactly on assistant spans, fixed-length blocks,
positions restarting per document, and packed logits == unpacked logits (block-diagonal mask)."""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exp1_assets.data.chat import IM_END, assistant_spans, render_chatml
from exp1_assets.data.blocks import BLOCK_COLUMNS, blocks_problem, collate_blocks, load_block_arrays, load_blocks
from exp1_assets.data.length_stats import histogram_png, length_analysis
from exp1_assets.data.packing import (
    IGNORE_INDEX, build_blocks, pack_best_fit_decreasing, pack_dataset, pack_split, split_overflow,
    tokenize_conversations,
)
from exp1_assets.data.tokenizer import train_bpe_tokenizer
from exp1_assets.markdown import png_markdown

MAX_LENGTH = 64
WORDS = ["alpha", "beta", "gamma", "delta", " spaced", "naïve", "🎉", "日本", "x=1", "\n", "don't", "42."]


def make_conversations(count: int, seed: int) -> list[list[dict[str, str]]]:
    """Chats of very mixed length (some longer than MAX_LENGTH tokens), with tricky starts."""
    rng = random.Random(seed)
    chats = []
    for _ in range(count):
        chat = [{"role": "system", "content": "Be brief."}] if rng.random() < 0.3 else []
        for _ in range(rng.choice([1, 1, 2, 3])):
            words = lambda: " ".join(rng.choices(WORDS, k=rng.choice([1, 3, 8, 30])))  # noqa: E731
            chat.append({"role": "user", "content": words()})
            chat.append({"role": "assistant", "content": rng.choice(["", "\n\n", " "]) + words()})
        chats.append(chat)
    return chats


def write_conversations(path: Path, chats: list[list[dict[str, str]]]) -> Path:
    pq.write_table(pa.Table.from_pylist([{"messages": chat} for chat in chats]), path)
    return path


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("packing")
    train_path = write_conversations(root / "train.parquet", make_conversations(300, seed=0))
    train_bpe_tokenizer(train_path=train_path, out_dir=root / "tokenizer", vocab_size=400)
    return AutoTokenizer.from_pretrained(root / "tokenizer")


def slow_reference(tokenizer, chat) -> tuple[list[int], list[int]]:
    """Per-token loop: label a token iff its char span is inside an assistant span; never the first."""
    text = render_chatml(chat)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = assistant_spans(chat)
    ids, labels = encoded["input_ids"], []
    for position, (token, (start, end)) in enumerate(zip(ids, encoded["offset_mapping"])):
        inside = any(s <= start and end <= e for s, e in spans)
        labels.append(token if inside and position > 0 else IGNORE_INDEX)
    return ids, labels


def documents_in_blocks(table: dict[str, list], pad_token_id: int) -> list[tuple[tuple, tuple]]:
    """Cut every block at position_ids == 0; drop the trailing all-pad filler run (checked)."""
    documents = []
    for ids, labels, positions in zip(table["input_ids"], table["labels"], table["position_ids"]):
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(ids)]
        runs = [(ids[a:b], labels[a:b], positions[a:b]) for a, b in zip(starts, starts[1:])]
        if all(t == pad_token_id for t in runs[-1][0]):
            filler = runs.pop()
            assert set(filler[1]) == {IGNORE_INDEX}
        for run_ids, run_labels, run_positions in runs:
            assert list(run_positions) == list(range(len(run_ids)))
            assert pad_token_id not in run_ids
            documents.append((tuple(run_ids), tuple(run_labels)))
    return documents


def test_labels_match_slow_reference_and_im_end_is_trained(tokenizer):
    chats = make_conversations(80, seed=3)
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    for chat, (ids, labels) in zip(chats, tokenize_conversations(tokenizer, chats)):
        assert ids.dtype == labels.dtype == np.int32
        assert (ids.tolist(), labels.tolist()) == slow_reference(tokenizer, chat)
        assistant_turns = sum(m["role"] == "assistant" for m in chat)
        assert labels.tolist().count(im_end) == assistant_turns  # every assistant <|im_end|> is a target
        assert labels[0] == IGNORE_INDEX
    everything = tokenize_conversations(tokenizer, chats[:5], train_on="all")
    for ids, labels in everything:
        assert labels[0] == IGNORE_INDEX and (labels[1:] == ids[1:]).all()
    with pytest.raises(ValueError, match="train_on"):
        tokenize_conversations(tokenizer, chats[:1], train_on="prompt")


def test_best_fit_decreasing_is_valid_and_matches_naive(tmp_path):
    rng = random.Random(1)
    for _ in range(20):
        lengths = [rng.randint(1, 50) for _ in range(rng.randint(1, 200))]
        blocks = pack_best_fit_decreasing(lengths, 50)
        assert sorted(i for block in blocks for i in block) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in block) <= 50 for block in blocks)
        # Naive O(n * blocks) best fit decreasing: same number of blocks and same fill levels.
        naive: list[int] = []
        for length in sorted(lengths, reverse=True):
            fits = [b for b, fill in enumerate(naive) if fill + length <= 50]
            if fits:
                naive[max(fits, key=lambda b: naive[b])] += length
            else:
                naive.append(length)
        assert sorted(sum(lengths[i] for i in b) for b in blocks) == sorted(naive)
    with pytest.raises(ValueError, match="max_length"):
        pack_best_fit_decreasing([3, 9], 8)


def test_overflow_split_loses_no_token():
    ids = np.arange(10, 35, dtype=np.int32)
    chunks = split_overflow(ids, ids.copy(), max_length=8)
    assert [len(c[0]) for c in chunks] == [8, 8, 8, 1]
    assert np.concatenate([c[0] for c in chunks]).tolist() == ids.tolist()
    assert all(c[1][0] == IGNORE_INDEX for c in chunks)
    blocks = build_blocks(chunks, pack_best_fit_decreasing([len(c[0]) for c in chunks], 8), max_length=8,
                          pad_token_id=0)
    assert blocks["input_ids"].shape == (4, 8) and int((blocks["input_ids"] != 0).sum()) == 25


def test_pack_split_invariants(tokenizer, tmp_path):
    from datasets import Dataset

    chats = make_conversations(120, seed=7)
    path = write_conversations(tmp_path / "train.parquet", chats)
    stats = pack_split(tokenizer=tokenizer, conversations_path=path, out_path=tmp_path / "train.arrow",
                       max_length=MAX_LENGTH, chunk_rows=50)
    dataset = Dataset.from_file(str(tmp_path / "train.arrow"))
    assert dataset.column_names == ["input_ids", "labels", "position_ids"]
    assert {f.type for f in dataset.data.schema} == {pa.list_(pa.int32())}
    table = dataset.to_dict()
    pad = tokenizer.pad_token_id
    assert len(table["input_ids"]) == stats.blocks
    assert all(len(row) == MAX_LENGTH for column in table.values() for row in column)
    for ids, labels in zip(table["input_ids"], table["labels"]):  # a pad is never a target
        assert all(label == IGNORE_INDEX for token, label in zip(ids, labels) if token == pad)

    # Every real token of a piece that trains something exactly once, in order, with the
    # reference labels: the packed documents are the reference conversations cut into
    # MAX_LENGTH chunks, minus the chunks without any target (counted instead).
    expected, lossless = [], []
    for chat in chats:
        ids, labels = slow_reference(tokenizer, chat)
        for start in range(0, len(ids), MAX_LENGTH):
            chunk_labels = [IGNORE_INDEX] + labels[start + 1:start + MAX_LENGTH]
            chunk = (tuple(ids[start:start + MAX_LENGTH]), tuple(chunk_labels))
            (expected if any(label != IGNORE_INDEX for label in chunk_labels) else lossless).append(chunk)
    assert lossless, "the test corpus must exercise a chunk without targets"
    assert Counter(documents_in_blocks(table, pad)) == Counter(expected)
    assert (stats.pieces_without_loss, stats.tokens_without_loss) == (len(lossless), sum(len(c[0]) for c in lossless))

    lengths = [len(slow_reference(tokenizer, chat)[0]) for chat in chats]
    too_long = [n for n in lengths if n > MAX_LENGTH]
    assert too_long, "the test corpus must exercise overflow"
    assert (stats.conversations, stats.tokens + stats.tokens_without_loss) == (len(chats), sum(lengths))
    assert (stats.truncated_conversations, stats.overflow_tokens) == (len(too_long), sum(n - MAX_LENGTH for n in too_long))
    assert stats.loss_tokens == sum(label != IGNORE_INDEX for row in table["labels"] for label in row)
    assert stats.loss_fraction == pytest.approx(stats.loss_tokens / (stats.blocks * MAX_LENGTH), abs=1e-6)
    assert stats.padding_fraction == pytest.approx(1 - stats.tokens / (stats.blocks * MAX_LENGTH), abs=1e-6)
    assert stats.conversations_without_loss == 0 and stats.length_summary["max"] == max(lengths)
    # What packing writes is what the contract's validator and reader accept.
    assert blocks_problem(tmp_path / "train.arrow", max_length=MAX_LENGTH, vocab_size=len(tokenizer)) is None
    loaded = load_blocks(tmp_path / "train.arrow", max_length=MAX_LENGTH, vocab_size=len(tokenizer))
    assert (loaded.column_names, len(loaded)) == (list(BLOCK_COLUMNS), stats.blocks)


def test_zero_loss_split_raises_and_counts_lossless(tokenizer, tmp_path):
    no_assistant = [[{"role": "user", "content": "hello"}]] * 3
    path = write_conversations(tmp_path / "validation.parquet", no_assistant)
    with pytest.raises(ValueError, match="split validation has no loss-carrying tokens"):
        pack_split(tokenizer=tokenizer, conversations_path=path, out_path=tmp_path / "validation.arrow",
                   max_length=MAX_LENGTH)
    assert not (tmp_path / "validation.arrow").exists()
    mixed = write_conversations(tmp_path / "mixed.parquet", no_assistant + make_conversations(4, seed=2))
    stats = pack_split(tokenizer=tokenizer, conversations_path=mixed, out_path=tmp_path / "mixed.arrow",
                       max_length=MAX_LENGTH)
    assert stats.conversations == 7 and stats.conversations_without_loss == 3


def test_pack_dataset_writes_meta_and_histogram(tokenizer, tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    write_conversations(splits / "train.parquet", make_conversations(40, seed=11))
    write_conversations(splits / "validation.parquet", make_conversations(10, seed=12))
    tokenizer.save_pretrained(tmp_path / "tok")
    stats = pack_dataset(tokenizer_dir=tmp_path / "tok", splits_dir=splits, out_dir=tmp_path / "packed",
                         max_length=MAX_LENGTH, train_on="assistant")
    meta = json.loads((tmp_path / "packed" / "meta.json").read_text())
    assert (meta["max_length"], meta["pad_token_id"], meta["vocab_size"]) == (MAX_LENGTH, tokenizer.pad_token_id, len(tokenizer))
    assert meta["splits"]["train"]["conversations"] == 40 == stats["train"].conversations
    assert meta["length_analysis"]["validation"]["count"] == 10
    assert (tmp_path / "packed" / "train.arrow").exists() and (tmp_path / "packed" / "validation.arrow").exists()
    assert png_markdown(tmp_path / "packed" / "length_histogram.png", alt="histogram").startswith("![histogram](data:image/png;base64,iVBOR")


def test_length_analysis_and_histogram(tmp_path):
    import matplotlib.pyplot as plt

    summary = length_analysis([50, 127, 128, 300, 600, 1500, 2048, 5000])
    assert list(summary["buckets"].values()) == [2, 1, 1, 1, 1, 2]
    assert (summary["min"], summary["max"], summary["median"], summary["count"]) == (50, 5000, 450.0, 8)
    assert length_analysis([])["count"] == 0
    image = plt.imread(histogram_png([10, 20, 20, 300], path=tmp_path / "h.png", title="t"))
    assert image.shape[:2] == (300, 600)


def _tiny_gpt2(vocab_size: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab_size, n_positions=MAX_LENGTH, n_embd=32, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    config._attn_implementation = "sdpa"
    return GPT2LMHeadModel(config).eval()


def test_packed_logits_equal_unpacked(tokenizer, tmp_path):
    """The block-diagonal claim: restart position_ids + attention_mask=None + use_cache=False.

    With the default use_cache=True (transformers 5.x) a cache is created, packed-sequence
    detection is skipped and documents DO attend to each other: training must disable the cache.
    """
    import torch

    path = write_conversations(tmp_path / "c.parquet", make_conversations(30, seed=5))
    pack_split(tokenizer=tokenizer, conversations_path=path, out_path=tmp_path / "c.arrow", max_length=MAX_LENGTH)
    reader = pa.ipc.open_stream(str(tmp_path / "c.arrow")).read_all().to_pydict()
    model = _tiny_gpt2(len(tokenizer))
    checked = 0
    for row in range(len(reader["input_ids"])):
        ids = torch.tensor([reader["input_ids"][row]])
        positions = torch.tensor([reader["position_ids"][row]])
        starts = (positions[0] == 0).nonzero().flatten().tolist() + [MAX_LENGTH]
        if len(starts) < 3:
            continue  # a single document + filler proves nothing about cross-attention
        with torch.no_grad():
            packed = model(input_ids=ids, position_ids=positions, attention_mask=None, use_cache=False).logits[0]
            leaky = model(input_ids=ids, position_ids=positions, attention_mask=None, use_cache=True).logits[0]
            alone = torch.cat([model(input_ids=ids[:, a:b], use_cache=False).logits[0]
                               for a, b in zip(starts, starts[1:])])
        assert (packed - alone).abs().max().item() < 1e-4
        assert (leaky - alone).abs().max().item() > 1e-3  # the trap documented above
        checked += 1
    assert checked >= 3


# ---- the packed-block contract (data/blocks.py) ----------------------------------------------------

GOOD_ROWS = {  # two blocks of 4: a document + filler, two documents
    "input_ids": [[5, 6, 7, 0], [8, 9, 5, 6]],
    "labels": [[-100, 6, 7, -100], [-100, 9, -100, 6]],
    "position_ids": [[0, 1, 2, 0], [0, 1, 0, 1]],
}


def write_stream(path: Path, columns: dict[str, list], *, item=pa.int32()) -> Path:
    table = pa.table({name: pa.array(rows, type=pa.list_(item)) for name, rows in columns.items()})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def test_block_validator_names_the_first_violation(tmp_path):
    def problem(columns, **kwargs):
        path = write_stream(tmp_path / "b.arrow", columns, **kwargs)
        return blocks_problem(path, max_length=4, vocab_size=10)

    assert problem(GOOD_ROWS) is None
    assert problem({**GOOD_ROWS, "labels": [[-100, 6, 7, -100], [-100, 9, -100]]}) == (
        f"{tmp_path / 'b.arrow'}: row 1 of labels has 3 tokens, max_length is 4")
    assert problem({k: v for k, v in GOOD_ROWS.items() if k != "position_ids"}).endswith(
        "missing column(s) ['position_ids']; has ['input_ids', 'labels']")
    assert problem(GOOD_ROWS, item=pa.int64()).endswith("column input_ids is list<item: int64>, "
                                                         "expected list<item: int32>")
    assert problem({**GOOD_ROWS, "input_ids": [[5, 6, 7, 0], [8, 10, 5, 6]]}).endswith(
        "row 1, token 1: token id 10 is outside the vocabulary (size 10)")
    assert problem({**GOOD_ROWS, "labels": [[-100, 6, 9, -100], [-100, 9, -100, 6]]}).endswith(
        "row 0, token 2: label 9 is neither -100 nor the token id 7")
    assert problem({**GOOD_ROWS, "labels": [[-100, 6, 7, -100], [8, 9, -100, 6]]}).endswith(
        "row 1, token 0: a document start (position 0) is a target (label 8)")
    assert problem({**GOOD_ROWS, "position_ids": [[0, 1, 2, 0], [1, 2, 0, 1]]}).endswith(
        "row 1, token 0: position ids start at 1, not 0")
    assert problem({**GOOD_ROWS, "labels": [[-100] * 4] * 2}).endswith(
        "no trained token (every label is -100): the loss mask masks everything")
    assert problem({name: [] for name in BLOCK_COLUMNS}).endswith(": no blocks")
    assert blocks_problem(tmp_path / "absent.arrow", max_length=4) == f"{tmp_path / 'absent.arrow'}: no such file"
    (tmp_path / "junk.arrow").write_bytes(b"not arrow")
    assert "not a readable Arrow IPC stream" in blocks_problem(tmp_path / "junk.arrow", max_length=4)


def test_load_blocks_refuses_what_the_validator_refuses(tmp_path):
    good = write_stream(tmp_path / "good.arrow", GOOD_ROWS)
    assert load_blocks(good, max_length=4, vocab_size=10).to_dict() == GOOD_ROWS
    arrays = load_block_arrays(good)
    assert {name: (a.dtype, a.tolist()) for name, a in arrays.items()} == {
        name: (np.dtype(np.int32), rows) for name, rows in GOOD_ROWS.items()}
    with pytest.raises(ValueError,
                       match=r"do not match the contract: .*row 0 of input_ids has 4 tokens, max_length is 8"):
        load_blocks(good, max_length=8, vocab_size=10)
    with pytest.raises(ValueError, match="token id 9 is outside the vocabulary"):
        load_blocks(good, max_length=4, vocab_size=9)
    with pytest.raises(FileNotFoundError, match="packed blocks not found"):
        load_blocks(tmp_path / "absent.arrow", max_length=4, vocab_size=10)


def test_collate_blocks_stacks_int64_without_attention_mask():
    import torch

    rows = [{name: GOOD_ROWS[name][i] for name in BLOCK_COLUMNS} for i in range(2)]
    batch = collate_blocks(rows)
    assert list(batch) == list(BLOCK_COLUMNS)  # no attention_mask: position_ids make the block-diagonal mask
    assert all(t.dtype == torch.long and t.shape == (2, 4) for t in batch.values())
    assert batch["labels"].tolist() == GOOD_ROWS["labels"]
    with pytest.raises(ValueError,
                       match=r"packed block is missing column 'position_ids' \(has \['input_ids', 'labels'\]\)"):
        collate_blocks([{"input_ids": [1], "labels": [1]}])


def _runs_here(implementation: str) -> bool:
    from exp1_assets.training.model import require_attention

    try:
        require_attention(implementation)
    except ValueError:
        return False
    import torch

    return implementation != "flash_attention_2" or torch.cuda.is_available()


@pytest.mark.parametrize("implementation", ["sdpa", "eager", "flash_attention_2"])
def test_every_attention_setting_keeps_packed_documents_apart(tokenizer, tmp_path, implementation):
    """The project's own model (llama, built as training builds it): packed logits == unpacked logits
    for each attention implementation this machine runs; the others are skipped, saying why."""
    import torch

    from exp1_assets.sizes import get_size
    from exp1_assets.training.model import build_model

    if not _runs_here(implementation):
        pytest.skip(f"{implementation} needs flash-attn and a CUDA device (not here)")
    path = write_conversations(tmp_path / "c.parquet", make_conversations(30, seed=7))
    pack_split(tokenizer=tokenizer, conversations_path=path, out_path=tmp_path / "c.arrow", max_length=MAX_LENGTH)
    blocks = pa.ipc.open_stream(str(tmp_path / "c.arrow")).read_all().to_pydict()
    device = "cuda" if implementation == "flash_attention_2" else "cpu"
    model = build_model(get_size("tiny"), architecture="llama", vocab_size=len(tokenizer), pad_token_id=0,
                        bos_token_id=None, eos_token_id=1, seed=0, attn_implementation=implementation)
    model = model.to(device, torch.bfloat16 if device == "cuda" else torch.float32).eval()
    assert model.config._attn_implementation == implementation
    checked, tolerance = 0, (2e-2 if device == "cuda" else 1e-4)
    for row in range(len(blocks["input_ids"])):
        ids = torch.tensor([blocks["input_ids"][row]], device=device)
        positions = torch.tensor([blocks["position_ids"][row]], device=device)
        starts = (positions[0] == 0).nonzero().flatten().tolist() + [MAX_LENGTH]
        if len(starts) < 3:
            continue  # one document + filler proves nothing about cross-attention
        with torch.no_grad():
            packed = model(input_ids=ids, position_ids=positions, attention_mask=None, use_cache=False).logits[0]
            alone = torch.cat([model(input_ids=ids[:, a:b], use_cache=False).logits[0]
                               for a, b in zip(starts, starts[1:])])
        assert (packed - alone).abs().max().item() < tolerance, implementation
        checked += 1
    assert checked >= 3


def test_flash_attention_without_flash_attn_is_refused_naming_what_is_missing(monkeypatch) -> None:
    import importlib.util

    from exp1_assets.training.model import require_attention

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name, *a))
    with pytest.raises(ValueError, match="'flash_attention_2' needs the flash-attn package"):
        require_attention("flash_attention_2")
