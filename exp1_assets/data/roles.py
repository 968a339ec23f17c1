"""Which raw role names mean system, user and assistant.

Chat exports name their speakers in many ways: OpenHermes-2.5 uses `system`/`human`/`gpt`,
ShareGPT exports add `chatgpt`, `bing`, `bard` and `user`, OpenAI-style `messages` use
`user`/`assistant`, Gemini-style data `model`. `ROLE_ALIASES` covers these; `RoleMap` overlays
(or replaces) them with a dataset's own names. Matching ignores case and surrounding spaces.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, get_args

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = get_args(Role)

ROLE_ALIASES: Mapping[str, Role] = MappingProxyType({
    "system": "system",
    "human": "user",
    "user": "user",
    "prompter": "user",  # OpenAssistant
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",  # ShareGPT exports
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",  # Gemini-style turns
})


def _alias_key(name: object, *, where: str) -> str:
    """The canonical (stripped, lower-case) form of one alias name; ValueError when unusable.

    >>> _alias_key("  ChatGPT ", where="x")
    'chatgpt'
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: alias names must be non-empty strings, got {name!r}")
    return name.strip().lower()


@dataclass(frozen=True)
class RoleMap:
    """The raw-role -> role table used to normalize turns (built and validated once per ingest).

    >>> RoleMap().resolve(" Bard ")
    'assistant'
    >>> RoleMap(aliases={"Teacher": "assistant"}).resolve("teacher")
    'assistant'
    >>> RoleMap(aliases={"student": "user", "tutor": "assistant"}, replace_defaults=True).resolve("gpt") is None
    True
    >>> RoleMap(aliases={"bot": "robot"})
    Traceback (most recent call last):
    ...
    ValueError: role_aliases['bot']: 'robot' is not one of ('system', 'user', 'assistant')
    """

    aliases: Mapping[str, Role] | None = None
    """Extra raw role names and the role each means; on a clash with a default, these win."""
    replace_defaults: bool = False
    """Use only `aliases` and drop `ROLE_ALIASES` (for datasets whose names mean something else)."""
    table: Mapping[str, Role] = field(init=False, repr=False, compare=False)
    """The resulting lower-case alias -> role table (derived, read-only)."""

    def __post_init__(self) -> None:
        if not isinstance(self.replace_defaults, bool):
            raise ValueError(f"replace_default_roles: must be a bool, got {self.replace_defaults!r}")
        if self.aliases is not None and not isinstance(self.aliases, Mapping):
            raise ValueError(f"role_aliases: must be a mapping of name -> role, got {type(self.aliases).__name__}")
        table: dict[str, Role] = {} if self.replace_defaults else dict(ROLE_ALIASES)
        given: dict[str, tuple[str, Role]] = {}
        for name, role in (self.aliases or {}).items():
            key = _alias_key(name, where=f"role_aliases[{name!r}]")
            if role not in ROLES:
                raise ValueError(f"role_aliases[{name!r}]: {role!r} is not one of {ROLES}")
            # "Bot" and "bot" are one name here: two spellings that disagree are a config error.
            if key in given and given[key][1] != role:
                raise ValueError(f"role_aliases[{name!r}]: {role!r} clashes with "
                                 f"role_aliases[{given[key][0]!r}]: {given[key][1]!r} (names ignore case)")
            given[key] = (name, role)
            table[key] = role
        missing = [role for role in ("user", "assistant") if role not in table.values()]
        if missing:
            raise ValueError(f"role_aliases: no name maps to {missing} (replace_default_roles=True "
                             f"keeps only role_aliases={dict(self.aliases or {})})")
        object.__setattr__(self, "table", MappingProxyType(table))

    def resolve(self, name: object) -> Role | None:
        """The role a raw role name means, or None when it is not a known name."""
        if not isinstance(name, str):
            return None
        return self.table.get(name.strip().lower())


DEFAULT_ROLE_MAP = RoleMap()
