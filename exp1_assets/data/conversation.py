"""One raw OpenHermes-2.5 / ShareGPT row -> one normalized conversation, or a reason to quarantine it.

OpenHermes-2.5 rows hold `conversations`: a list of `{"from", "value", "weight"}` turns with
`from` in system|human|gpt, plus many optional, mostly-null columns (system_prompt, source,
category, id, hash, idx, ...). ShareGPT exports use the same layout with more role names
(chatgpt, bing, bard, user: see `roles.py`). We also accept `{"role", "content"}` turns (a
`messages` column) and Alpaca-style `instruction`/`input`/`output` rows.

The normalized form (docs/artifacts.md) is
`{"id", "messages": [{"role", "content"}], "source", "category", "task", "answer", "row"}`
with roles system|user|assistant and at least one assistant turn that answers a user turn.
About a third of a real ShareGPT export starts with the assistant (long chats are split into
parts, later parts start mid-conversation): such leading assistant turns are kept as context
(packing does not train on them by default) unless `leading_assistant="quarantine"`. Every
rejection carries a stable reason code (see `REASONS`) and a detail string saying where
(which turn, which value), so a quarantine report is actionable.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal, get_args

from exp1_assets.data.roles import DEFAULT_ROLE_MAP, RoleMap

# Stable reason codes: dashboards and tests count by these strings, so never rename one.
REASONS = (
    "missing_conversations",
    "unknown_role",
    "empty_value",
    "non_string_value",
    "no_assistant_turn",
    "bad_first_turn",
    "too_long",
    "duplicate",
    "undecodable",
    "not_an_object",
    "no_assistant_reply",  # assistant turns, but none after a user turn (nothing to train)
)

# What to do with assistant turns before the first user turn: keep them as context, or
# quarantine the row as `bad_first_turn` (the behaviour before ShareGPT-style data was accepted).
LeadingAssistant = Literal["keep", "quarantine"]
LEADING_ASSISTANT: tuple[str, ...] = get_args(LeadingAssistant)

DEFAULT_MAX_CHARS = 100_000

# Columns whose first non-empty value names the conversation (docs/artifacts.md: id/idx/hash).
ID_COLUMNS = ("id", "idx", "hash")


@dataclass(frozen=True)
class Rejection:
    """Why a row was quarantined: a code from `REASONS` and a human-readable detail."""

    reason: str
    detail: str

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"reason: {self.reason!r} is not one of {REASONS}")


def decode_jsonl_line(line: bytes) -> Any:
    """Parse one JSONL line; a `Rejection("undecodable", ...)` when it is not UTF-8 JSON.

    >>> decode_jsonl_line(b'{"a": 1}')
    {'a': 1}
    >>> decode_jsonl_line(b'{"a": ').reason
    'undecodable'
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        return Rejection("undecodable", f"not UTF-8 at byte {error.start}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        return Rejection("undecodable", f"invalid JSON: {error.msg} at column {error.colno}")


def _raw_turns(raw: dict[str, Any]) -> list[Any] | Rejection:
    """The row's turns as a list of `{from/role, value/content}` dicts (not yet validated)."""
    for column in ("conversations", "messages"):
        turns = raw.get(column)
        if turns is not None:
            if not isinstance(turns, list) or not turns:
                return Rejection("missing_conversations", f"'{column}' is {type(turns).__name__} "
                                 f"of length {len(turns) if hasattr(turns, '__len__') else '?'}")
            return turns
    # Alpaca-style rows become one user turn (instruction + optional input) and one answer.
    if "instruction" in raw or "output" in raw:
        instruction, extra = raw.get("instruction"), raw.get("input")
        if isinstance(instruction, str) and isinstance(extra, str) and extra.strip():
            instruction = f"{instruction}\n\n{extra}"
        return [{"from": "human", "value": instruction}, {"from": "gpt", "value": raw.get("output")}]
    return Rejection("missing_conversations", "no 'conversations', 'messages' or "
                     "'instruction'/'output' column")


def _normalize_turn(turn: Any, index: int, roles: RoleMap) -> dict[str, str] | Rejection:
    if not isinstance(turn, dict):
        return Rejection("unknown_role", f"turn {index} is {type(turn).__name__}, not an object")
    role = turn.get("from", turn.get("role"))
    mapped = roles.resolve(role)
    if mapped is None:
        return Rejection("unknown_role", f"turn {index}: role {role!r}")
    value = turn.get("value", turn.get("content"))
    if not isinstance(value, str):
        return Rejection("non_string_value", f"turn {index}: value is {type(value).__name__}")
    # Surrounding whitespace carries no meaning in chat data and would leak into the template.
    content = value.strip()
    if not content:
        return Rejection("empty_value", f"turn {index} ({role}) is empty")
    return {"role": mapped, "content": content}


def _optional_str(value: Any) -> str | None:
    """Null-ish columns (None, "", NaN from pandas) -> None; anything else -> str."""
    if value is None or value != value:  # value != value catches float NaN
        return None
    text = str(value).strip()
    return text or None


def normalize_row(
    raw: Any,
    *,
    row: int,
    default_id: str | None = None,
    default_source: str = "unknown",
    max_chars: int = DEFAULT_MAX_CHARS,
    roles: RoleMap = DEFAULT_ROLE_MAP,
    leading_assistant: LeadingAssistant = "keep",
) -> dict[str, Any] | Rejection:
    """Validate one raw row; return the normalized conversation or a `Rejection`.

    `row` is the row's index in its input; `default_id` names rows without id/idx/hash
    (default `row-<row>`); `roles` maps raw role names; `leading_assistant` keeps assistant
    turns before the first user turn (as context) or quarantines the row (`bad_first_turn`).
    Duplicates are not detected here (that needs state): see `DuplicateFilter`.

    >>> raw = {"conversations": [{"from": "human", "value": "2+2?", "weight": None},
    ...                          {"from": "gpt", "value": " 4 ", "weight": None}],
    ...        "system_prompt": "Be brief.", "source": None, "id": None}
    >>> conv = normalize_row(raw, row=7)
    >>> [(m["role"], m["content"]) for m in conv["messages"]]
    [('system', 'Be brief.'), ('user', '2+2?'), ('assistant', '4')]
    >>> conv["id"], conv["source"], conv["row"]
    ('row-7', 'unknown', 7)
    >>> sharegpt = {"conversations": [{"from": "chatgpt", "value": "...and that is part 1."},
    ...                               {"from": "human", "value": "Go on"},
    ...                               {"from": "bard", "value": "Part 2."}]}
    >>> [m["role"] for m in normalize_row(sharegpt, row=0)["messages"]]
    ['assistant', 'user', 'assistant']
    >>> normalize_row(sharegpt, row=0, leading_assistant="quarantine")
    Rejection(reason='bad_first_turn', detail='first non-system turn is assistant, not user')
    >>> normalize_row({"conversations": [{"from": "gpt", "value": "hi"}]}, row=0).reason
    'no_assistant_reply'
    """
    if leading_assistant not in LEADING_ASSISTANT:
        raise ValueError(f"leading_assistant: {leading_assistant!r} is not one of {LEADING_ASSISTANT}")
    if not isinstance(raw, dict):
        return Rejection("not_an_object", f"row is {type(raw).__name__}")
    turns = _raw_turns(raw)
    if isinstance(turns, Rejection):
        return turns

    messages: list[dict[str, str]] = []
    for index, turn in enumerate(turns):
        message = _normalize_turn(turn, index, roles)
        if isinstance(message, Rejection):
            return message
        messages.append(message)

    # A top-level system prompt is the real data's other way of saying "system turn".
    system_prompt = _optional_str(raw.get("system_prompt"))
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})

    first_chat = next((m["role"] for m in messages if m["role"] != "system"), None)
    if not any(m["role"] == "assistant" for m in messages):
        return Rejection("no_assistant_turn", f"roles {[m['role'] for m in messages]}")
    if first_chat != "user" and leading_assistant == "quarantine":
        return Rejection("bad_first_turn", f"first non-system turn is {first_chat}, not user")
    first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), len(messages))
    if not any(m["role"] == "assistant" for m in messages[first_user:]):
        # Only leading (context) assistant turns: nothing to train on, no prompt to evaluate.
        return Rejection("no_assistant_reply", f"no assistant turn after a user turn: roles "
                                               f"{[m['role'] for m in messages]}")
    total = sum(len(m["content"]) for m in messages)
    if total > max_chars:
        return Rejection("too_long", f"{total} characters > max_chars={max_chars}")

    row_id = next((_optional_str(raw.get(c)) for c in ID_COLUMNS if _optional_str(raw.get(c))), None)
    return {
        "id": row_id or default_id or f"row-{row}",
        "messages": messages,
        "source": _optional_str(raw.get("source")) or default_source,
        "category": _optional_str(raw.get("category")),
        "task": _optional_str(raw.get("task")),
        "answer": _optional_str(raw.get("answer")),
        "row": row,
    }


def messages_digest(messages: list[dict[str, str]]) -> bytes:
    """A 16-byte content hash of a conversation's messages (exact-duplicate identity)."""
    canonical = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).digest()


class DuplicateFilter:
    """Remembers kept conversations by digest; 16 bytes each keeps ~1M rows near 100 MB.

    >>> seen = DuplicateFilter()
    >>> msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    >>> seen.is_duplicate(msgs), seen.is_duplicate(msgs)
    (False, True)
    """

    def __init__(self) -> None:
        self._digests: set[bytes] = set()

    def is_duplicate(self, messages: list[dict[str, str]]) -> bool:
        digest = messages_digest(messages)
        if digest in self._digests:
            return True
        self._digests.add(digest)
        return False
