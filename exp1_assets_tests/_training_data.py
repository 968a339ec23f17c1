"""A small ChatML tokenizer and packed blocks for training tests (independent of data/).

Built in seconds: a byte-level BPE trained on a few hundred templated conversations, and blocks
packed greedily in the docs/artifacts.md format (Arrow IPC stream; input_ids/labels/position_ids).
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa

CHAT_TEMPLATE = (
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
WORDS = ["red", "blue", "green", "cat", "dog", "bird", "apple", "pear", "river", "stone"]


def conversations(*, count: int, seed: int) -> list[list[dict[str, str]]]:
    """Templated two-turn chats with learnable answers (arithmetic and word reversal)."""
    rng = random.Random(seed)
    chats = []
    for _ in range(count):
        if rng.random() < 0.5:
            a, b = rng.randint(0, 20), rng.randint(0, 20)
            question, answer = f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
        else:
            word = rng.choice(WORDS)
            question, answer = f"Reverse the word {word}.", f"The word {word} reversed is {word[::-1]}."
        chats.append([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
    return chats


def pseudo_words(*, count: int, seed: int) -> list[str]:
    """Lines of random lowercase pseudo-words: enough distinct letter pairs, triples, ... for BPE to
    learn GPT-2's 50,000 merges (the templated chats alone run out of pairs after a few hundred)."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(count)]
    return [" ".join(words[i:i + 50]) for i in range(0, count, 50)]


def build_tokenizer(directory: Path, *, vocab_size: int = 400, extra_texts: Iterable[str] = ()):
    """The ChatML byte-level BPE; `extra_texts` are trained on too (the trainer stops early, below
    `vocab_size`, when the texts have no pairs left to merge: callers that need the size check it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [
        "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in chat)
        for chat in conversations(count=400, seed=1)
    ] + list(extra_texts)
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|im_end|>",
        pad_token="<|pad|>", unk_token=None,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return tokenizer


def render(tokenizer, chat: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids and labels: only the assistant turn (content + <|im_end|>) is trained."""
    prompt = tokenizer.apply_chat_template(chat[:-1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(chat, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids
    labels = [-100] * len(prompt_ids) + ids[len(prompt_ids):]
    return ids, labels


def write_blocks(path: Path, *, tokenizer, chats, max_length: int) -> int:
    """Greedy packing into rows of exactly max_length; filler is pad with labels -100."""
    rows = {"input_ids": [], "labels": [], "position_ids": []}
    current: dict[str, list[int]] = {k: [] for k in rows}

    def flush() -> None:
        filler = max_length - len(current["input_ids"])
        current["input_ids"] += [tokenizer.pad_token_id] * filler
        current["labels"] += [-100] * filler
        current["position_ids"] += list(range(filler))
        for key in rows:
            rows[key].append(current[key])
            current[key] = []

    for chat in chats:
        ids, labels = render(tokenizer, chat)
        ids, labels = ids[:max_length], labels[:max_length]
        if len(current["input_ids"]) + len(ids) > max_length:
            flush()
        current["input_ids"] += ids
        current["labels"] += labels
        current["position_ids"] += list(range(len(ids)))
    if current["input_ids"]:
        flush()
    table = pa.table({k: pa.array(v, type=pa.list_(pa.int32())) for k, v in rows.items()})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return table.num_rows


def build_dataset(root: Path, *, max_length: int = 64, train_chats: int = 600,
                  validation_chats: int = 80) -> dict[str, str]:
    """Tokenizer + train/validation blocks under root; returns the paths for a TrainSpec."""
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(root / "tokenizer")
    write_blocks(root / "train.arrow", tokenizer=tokenizer,
                 chats=conversations(count=train_chats, seed=2), max_length=max_length)
    write_blocks(root / "validation.arrow", tokenizer=tokenizer,
                 chats=conversations(count=validation_chats, seed=3), max_length=max_length)
    return {"train_path": str(root / "train.arrow"), "validation_path": str(root / "validation.arrow"),
            "tokenizer_path": str(root / "tokenizer")}
