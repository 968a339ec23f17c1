"""A tiny random GPT-2 + ChatML BPE tokenizer saved like a checkpoint, for the evaluation tests.

Built here (not with the training package) so the evaluation tests stand alone.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

CORPUS = [
    f"<|im_start|>{role}\n{text}<|im_end|>\n"
    for role in ("system", "user", "assistant")
    for text in (
        "What is 12 + 7? 12 + 7 = 19.", "Reverse the word 'apple'. The word reversed is 'elppa'.",
        "Write a short story about a fox named Oskar who loved climbing trees.",
        "Here is the function:\n```python\ndef add(a, b):\n    return a + b\n```",
        "The capital of Quagordri is Velish. Summarize the paragraph in one sentence!",
        "Sort these numbers: 5, 3, 9. In ascending order: 3, 5, 9. Is 743 even? No, it is odd.",
    )
]


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(CORPUS * 3, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                  pad_token="<|pad|>", unk_token=None,
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_checkpoint(directory: Path, *, seed: int = 0) -> Path:
    """Save a random 2-layer GPT-2 (n_embd 64) and the tokenizer into `directory`."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = make_tokenizer()
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=64, n_layer=2, n_head=2,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id, attn_implementation="sdpa",
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        initializer_range=0.2)  # wide init: varied, non-degenerate greedy text
    model = GPT2LMHeadModel(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def chat_rows(n: int) -> list[dict]:
    """Test-split-like rows: messages + task + answer."""
    rows = []
    for i in range(n):
        a, b = i % 13, (3 * i) % 11
        messages = [{"role": "user", "content": f"What is {a} + {b}?"},
                    {"role": "assistant", "content": f"{a} + {b} = {a + b}."}]
        if i % 3 == 0:
            messages = [{"role": "system", "content": "Be brief."}] + messages
        rows.append({"messages": messages, "task": "arithmetic" if i % 2 else "addition", "answer": str(a + b)})
    return rows


def packed_blocks(tokenizer, *, n_blocks: int, max_length: int) -> list[dict]:
    """Pack rendered conversations into blocks with restarting position ids and assistant labels."""
    pad = tokenizer.pad_token_id
    blocks, ids, labels, pos = [], [], [], []
    for row in chat_rows(n_blocks * 4):
        conv_ids, conv_labels = [], []
        for m in row["messages"]:
            piece = tokenizer(f"<|im_start|>{m['role']}\n", add_special_tokens=False)["input_ids"]
            body = tokenizer(f"{m['content']}<|im_end|>", add_special_tokens=False)["input_ids"]
            nl = tokenizer("\n", add_special_tokens=False)["input_ids"]
            conv_ids += piece + body + nl
            conv_labels += [-100] * len(piece) + (body if m["role"] == "assistant" else [-100] * len(body)) + [-100] * len(nl)
        if len(ids) + len(conv_ids) > max_length:
            fill = max_length - len(ids)
            blocks.append({"input_ids": ids + [pad] * fill, "labels": labels + [-100] * fill,
                           "position_ids": pos + list(range(fill))})
            ids, labels, pos = [], [], []
            if len(blocks) == n_blocks:
                break
        ids, labels, pos = ids + conv_ids, labels + conv_labels, pos + list(range(len(conv_ids)))
    return blocks
