"""ChatML rendering and the character spans a model is trained on.

A conversation renders as one `<|im_start|>{role}\\n{content}<|im_end|>\\n` block per turn; a
generation prompt appends `<|im_start|>assistant\\n`. `CHATML_TEMPLATE` (Jinja, stored in the
tokenizer) and `render_chatml` (plain Python, used for packing) produce the same string, which a
test checks against `tokenizer.apply_chat_template`.

The trained span of an assistant turn is its content plus its `<|im_end|>`: the model must learn
to *stop* (known trap: a masked end-of-turn token means generation never ends). The
`<|im_start|>assistant\\n` header and the newline after `<|im_end|>` are given, never predicted.
Assistant turns before the first user turn (ShareGPT-style chats split into parts start
mid-conversation) are context: they answer nothing in the conversation, so they are not trained
unless `train_on_leading_assistant=True`. The rendered text is the same either way.
"""

from __future__ import annotations

from typing import Sequence

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
BOS = "<|endoftext|>"
SPECIAL_TOKENS = (BOS, IM_START, IM_END, PAD)
ROLES = ("system", "user", "assistant")

# One line of Jinja on purpose: template whitespace would leak into the rendered text.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

Message = dict[str, str]


def _check_messages(messages: Sequence[Message]) -> None:
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"messages[{index}].role: {role!r} is not one of {ROLES}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{index}].content: expected str, got {type(content).__name__}")


def render_with_spans(
    messages: Sequence[Message], *, add_generation_prompt: bool = False, train_on_leading_assistant: bool = False
) -> tuple[str, list[tuple[int, int]]]:
    """The ChatML text and the (start, end) character spans of the assistant turns to train on.

    Assistant turns before the first user turn get a span only with `train_on_leading_assistant`.

    >>> text, spans = render_with_spans([{"role": "user", "content": "Hi"},
    ...                                  {"role": "assistant", "content": "Yo"}])
    >>> text
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nYo<|im_end|>\\n'
    >>> [text[s:e] for s, e in spans]
    ['Yo<|im_end|>']
    >>> part2 = [{"role": "assistant", "content": "...end of part 1."},
    ...          {"role": "user", "content": "More"}, {"role": "assistant", "content": "Part 2"}]
    >>> text, spans = render_with_spans(part2)
    >>> [text[s:e] for s, e in spans]
    ['Part 2<|im_end|>']
    >>> text, spans = render_with_spans(part2, train_on_leading_assistant=True)
    >>> [text[s:e] for s, e in spans]
    ['...end of part 1.<|im_end|>', 'Part 2<|im_end|>']
    """
    _check_messages(messages)
    pieces: list[str] = []
    spans: list[tuple[int, int]] = []
    cursor = 0
    seen_user = train_on_leading_assistant  # True: every assistant turn is trained
    for message in messages:
        header = f"{IM_START}{message['role']}\n"
        body = f"{message['content']}{IM_END}"
        seen_user = seen_user or message["role"] == "user"
        if message["role"] == "assistant" and seen_user:
            start = cursor + len(header)
            spans.append((start, start + len(body)))
        piece = header + body + "\n"
        pieces.append(piece)
        cursor += len(piece)
    if add_generation_prompt:
        pieces.append(f"{IM_START}assistant\n")
    return "".join(pieces), spans


def render_chatml(messages: Sequence[Message], *, add_generation_prompt: bool = False) -> str:
    """Same string as `tokenizer.apply_chat_template(messages, tokenize=False, ...)`.

    >>> render_chatml([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    return render_with_spans(messages, add_generation_prompt=add_generation_prompt)[0]


def assistant_spans(messages: Sequence[Message], *, train_on_leading_assistant: bool = False) -> list[tuple[int, int]]:
    """Character spans of `render_chatml(messages)` that are trained (content + `<|im_end|>`).

    >>> assistant_spans([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    [(52, 64)]
    """
    return render_with_spans(messages, train_on_leading_assistant=train_on_leading_assistant)[1]


def prompt_and_reference(messages: Sequence[Message]) -> tuple[list[Message], str]:
    """(turns before the last assistant turn, that turn's content): an evaluation example.

    >>> prompt_and_reference([{"role": "user", "content": "2+2?"},
    ...                       {"role": "assistant", "content": "4"}])
    ([{'role': 'user', 'content': '2+2?'}], '4')
    """
    _check_messages(messages)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise ValueError("messages: no assistant turn, so there is no reference answer")
    if last == 0:
        raise ValueError("messages: the last assistant turn has no prompt before it")
    return [dict(m) for m in messages[:last]], messages[last]["content"]
