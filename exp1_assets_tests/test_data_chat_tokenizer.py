"""ChatML rendering, assistant spans, and the trained / adapted tokenizer (all offline)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # the Hub is unreachable here: fail fast, never hang

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exp1_assets.data.chat import (
    BOS, CHATML_TEMPLATE, IM_END, IM_START, PAD, assistant_spans, prompt_and_reference, render_chatml,
)
from exp1_assets.data.tokenizer import (
    iter_conversation_messages, load_pretrained_tokenizer, roundtrip_ok, train_bpe_tokenizer,
)

WORDS = ["the", "cat", "sat", "on", "a", "mat", "with", "12", "apples", "3.5", "naïve", "🎉", "日本語", "don't"]
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sta", "pel", "dor", "vin", "qu", "zeb", "tho"]
TRICKY_TEXTS = [
    " leading space", "  two leading spaces", "trailing space ", "\n\nleading newlines\n",
    "tabs\tand\r\nCRLF", "emoji 🎉👩‍👩‍👧 and flags 🇫🇷", "日本語のテキスト", "naïve café Zürich ½ ∑ ≠",
    "don't 's . , ! ?", "code:\n    def f(x):\n        return x  # ok\n", "", "\u200b zero width",
    f"text with markers {IM_START}user\nhi{IM_END}\n",
]
MULTI_TURN = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello 🎉"},
    {"role": "user", "content": " second question"},
    {"role": "assistant", "content": "\n\nsecond answer\n"},
]
# A later part of a split ShareGPT chat: it starts with the assistant's turn (context).
PART_TWO = [
    {"role": "system", "content": "You are terse."},
    {"role": "assistant", "content": "...and that ends part one."},
    {"role": "assistant", "content": "Anything else?"},
    {"role": "user", "content": "Go on"},
    {"role": "assistant", "content": "Part two."},
]


def make_conversations(count: int, seed: int) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    # Invented words give BPE enough distinct pairs to fill a 500-token vocabulary.
    words = WORDS + ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(300)]
    chats = []
    for _ in range(count):
        chat = [{"role": "system", "content": "Be helpful."}] if rng.random() < 0.3 else []
        for _ in range(rng.randint(1, 3)):
            chat.append({"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(2, 12)))})
            chat.append({"role": "assistant", "content": " ".join(rng.choices(words, k=rng.randint(1, 20)))})
        chats.append(chat)
    return chats


def write_conversations(path: Path, chats: list[list[dict[str, str]]]) -> Path:
    pq.write_table(pa.Table.from_pylist([{"messages": chat} for chat in chats]), path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    train_path = write_conversations(root / "train.parquet", make_conversations(400, seed=0))
    info = train_bpe_tokenizer(train_path=train_path, out_dir=root / "tokenizer", vocab_size=500)
    return info, root / "tokenizer"


def test_render_equals_apply_chat_template(trained):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained[1])
    for chat in [MULTI_TURN, MULTI_TURN[1:3], PART_TWO, PART_TWO[1:], *make_conversations(20, seed=5)]:
        for prompt in (False, True):
            expected = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=prompt)
            assert render_chatml(chat, add_generation_prompt=prompt) == expected
    assert render_chatml(MULTI_TURN[1:2], add_generation_prompt=True).endswith(f"{IM_END}\n{IM_START}assistant\n")


def test_assistant_spans_cover_content_and_im_end_only():
    text = render_chatml(MULTI_TURN)
    spans = assistant_spans(MULTI_TURN)
    assert [text[s:e] for s, e in spans] == [f"Hello 🎉{IM_END}", f"\n\nsecond answer\n{IM_END}"]
    for start, end in spans:
        assert text[:start].endswith(f"{IM_START}assistant\n")  # header not trained
        assert text[end] == "\n"  # the newline after <|im_end|> not trained
    assert assistant_spans(MULTI_TURN[:2]) == []


def test_leading_assistant_turns_are_context_unless_asked():
    text = render_chatml(PART_TWO)
    assert [text[s:e] for s, e in assistant_spans(PART_TWO)] == [f"Part two.{IM_END}"]
    assert [text[s:e] for s, e in assistant_spans(PART_TWO, train_on_leading_assistant=True)] == [
        f"...and that ends part one.{IM_END}", f"Anything else?{IM_END}", f"Part two.{IM_END}"]
    # Turns after the first user turn are trained as before, whatever the option says.
    assert assistant_spans(MULTI_TURN, train_on_leading_assistant=True) == assistant_spans(MULTI_TURN)
    assert assistant_spans(PART_TWO[:3]) == []


def test_prompt_and_reference_and_bad_messages():
    prompt, reference = prompt_and_reference(MULTI_TURN)
    assert prompt == MULTI_TURN[:4] and reference == "\n\nsecond answer\n"
    with pytest.raises(ValueError, match="no assistant turn"):
        prompt_and_reference(MULTI_TURN[:2])
    prompt, reference = prompt_and_reference(PART_TWO)  # the leading turns are part of the prompt
    assert prompt == PART_TWO[:4] and reference == "Part two."
    with pytest.raises(ValueError, match=r"messages\[1\].role"):
        render_chatml([{"role": "user", "content": "a"}, {"role": "gpt", "content": "b"}])
    with pytest.raises(ValueError, match=r"messages\[0\].content"):
        render_chatml([{"role": "user", "content": None}])


def test_trained_tokenizer_reloads_offline_with_single_special_tokens(trained):
    from transformers import AutoTokenizer

    info, directory = trained
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert info.vocab_size == len(tokenizer) == 500
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token == PAD and tokenizer.bos_token == BOS
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert (info.pad_token_id, info.eos_token_id, info.bos_token_id) == (
        tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id)
    for token in (BOS, IM_START, IM_END, PAD):
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert ids == [tokenizer.convert_tokens_to_ids(token)], token
    # No implicit BOS/EOS: the ChatML text is the whole sequence.
    assert tokenizer("hello")["input_ids"] == tokenizer.encode("hello", add_special_tokens=False)
    assert tokenizer.chat_template == CHATML_TEMPLATE
    ids = tokenizer.apply_chat_template(MULTI_TURN[1:3], tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert ids[0] == info.im_start_id and ids.count(info.im_end_id) == 2
    assert 1.5 < info.bytes_per_token < 20
    assert not json.loads((directory / "tokenizer_config.json").read_text()).get("clean_up_tokenization_spaces")


def test_trained_tokenizer_roundtrips_tricky_unicode(trained):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained[1])
    texts = TRICKY_TEXTS + [render_chatml(MULTI_TURN)]
    ok, failures = roundtrip_ok(tokenizer, texts)
    assert failures == [] and ok == len(texts)


def test_sampling_reads_exactly_sample_rows(tmp_path):
    path = write_conversations(tmp_path / "t.parquet", make_conversations(50, seed=1))
    assert len(list(iter_conversation_messages(path, sample_rows=7))) == 7
    assert len(list(iter_conversation_messages(path, sample_rows=None))) == 50
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe_tokenizer(train_path=path, out_dir=tmp_path / "x", vocab_size=100)


def test_pretrained_local_tokenizer_gets_chatml_and_distinct_pad(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    # A GPT-2-like tokenizer: byte-level, <|endoftext|> as bos=eos, no pad, no ChatML markers.
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator([" ".join(WORDS)] * 20, trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=[BOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=BOS).save_pretrained(tmp_path / "base")

    info = load_pretrained_tokenizer(name_or_path=str(tmp_path / "base"), out_dir=tmp_path / "adapted")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "adapted")
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token == PAD
    assert len({info.pad_token_id, info.eos_token_id, info.bos_token_id, info.im_start_id}) == 4
    assert info.vocab_size == len(tokenizer) == len(core.get_vocab()) + 3
    for token in (IM_START, IM_END, PAD):
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1
    assert tokenizer.apply_chat_template(MULTI_TURN, tokenize=False) == render_chatml(MULTI_TURN)


def test_pretrained_hub_name_offline_says_use_trained(tmp_path):
    with pytest.raises(ValueError, match="use the trained BPE tokenizer"):
        load_pretrained_tokenizer(name_or_path="gpt2", out_dir=tmp_path / "gpt2")
