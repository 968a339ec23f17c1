"""The data stages' settings, and the one place their defaults live.

Light on purpose (no pyarrow, numpy or transformers): the Dagster layer imports these to overlay a
run's config on them, and the code server imports the Dagster layer on every reload. Each stage's
library function takes its spec; the assets build it from the defaults plus the config's set fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from exp1_assets.data.conversation import DEFAULT_MAX_CHARS, LeadingAssistant
from exp1_assets.data.roles import Role

TokenizerKind = Literal["trained", "pretrained"]


@dataclass(frozen=True)
class SplitSpec:
    """How conversations are split into train / validation / test."""

    fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)
    """(train, validation, test): each >= 0, train > 0, summing to 1. On the real ~1M-row corpus,
    (0.98, 0.01, 0.01) still leaves ~10k validation and test conversations each."""
    seed: int = 0
    """Seed of the prompt hash that assigns splits."""

    def __post_init__(self) -> None:
        if len(self.fractions) != 3:
            raise ValueError(f"fractions: need 3 values (train, validation, test), got {self.fractions}")
        if any(f < 0 for f in self.fractions):
            raise ValueError(f"fractions: each must be >= 0, got {self.fractions}")
        if self.fractions[0] <= 0:
            raise ValueError(f"fractions: train must be > 0, got {self.fractions}")
        if abs(sum(self.fractions) - 1.0) > 1e-6:
            raise ValueError(f"fractions: must sum to 1, got {sum(self.fractions)}")


@dataclass(frozen=True)
class TokenizerSpec:
    """Which tokenizer the graph builds."""

    kind: TokenizerKind = "trained"
    """trained: a byte-level BPE on the train split; pretrained: an existing tokenizer, adapted."""
    vocab_size: int = 4096
    """Trained BPE: vocabulary size (the research plan's real runs: 32000, or GPT-2's 50257)."""
    pretrained: str = "gpt2"
    """Pretrained: a Hub name or a local folder."""
    sample_rows: int | None = 200_000
    """Trained BPE: learn from at most this many conversations (None: all)."""

    def __post_init__(self) -> None:
        if self.kind not in get_args(TokenizerKind):
            raise ValueError(f"tokenizer.kind: {self.kind!r} is not one of {get_args(TokenizerKind)}")
        if self.vocab_size <= 0:
            raise ValueError(f"tokenizer.vocab_size: must be positive, got {self.vocab_size}")
        if self.sample_rows is not None and self.sample_rows <= 0:
            raise ValueError(f"tokenizer.sample_rows: must be > 0 or None, got {self.sample_rows}")


SourceKind = Literal["builtin", "local", "hub"]
TrainOn = Literal["assistant", "all"]


@dataclass(frozen=True)
class IngestSpec:
    """Where raw conversations come from and what makes a row bad (`sources.ingest_conversations`)."""

    source: SourceKind = "builtin"
    """builtin: the synthetic corpus (offline); local: files on disk; hub: a Hugging Face dataset."""
    path: str | None = None
    """local: a .jsonl, .json array, .parquet file, a save_to_disk folder, or a glob of them."""
    hub_id: str = "teknium/OpenHermes-2.5"
    """hub: the dataset id."""
    max_samples: int | None = None
    """Read at most this many input rows (None: all)."""
    seed: int = 0
    """Seed of the built-in generator."""
    builtin_size: int = 20_000
    """Conversations the built-in generator makes."""
    max_chars: int = DEFAULT_MAX_CHARS
    """Longer conversations are quarantined as too_long."""
    role_aliases: Mapping[str, Role] | None = None
    """Extra raw role names (case-insensitive) and the role each means, over the defaults in `roles.py`."""
    replace_default_roles: bool = False
    """Use only `role_aliases`, without the built-in alias table."""
    leading_assistant: LeadingAssistant = "keep"
    """keep: assistant turns before the first user turn are context (ShareGPT parts); quarantine: reject."""
    max_quarantine_fraction: float = 0.2
    """The quarantine check fails when more than this share of input rows was quarantined."""

    def __post_init__(self) -> None:
        if self.source not in get_args(SourceKind):
            raise ValueError(f"source: {self.source!r} is not one of {get_args(SourceKind)}")
        if not 0.0 <= self.max_quarantine_fraction <= 1.0:
            raise ValueError(f"max_quarantine_fraction: must be in [0, 1], got {self.max_quarantine_fraction}")

    def reader_arguments(self) -> dict[str, Any]:
        """The keyword arguments of `ingest_conversations` (everything but the check's limit)."""
        return {k: v for k, v in asdict(self).items() if k != "max_quarantine_fraction"}


@dataclass(frozen=True)
class PackSpec:
    """How conversations become fixed-length training blocks (`packing.pack_dataset`)."""

    max_length: int = 256
    """Block length in tokens; the research plan used 2048 (tiny: 256)."""
    train_on: TrainOn = "assistant"
    """assistant: the loss covers assistant replies only; all: every token."""
    chunk_rows: int = 20_000
    """Conversations tokenized and packed per chunk (bounds memory)."""
    train_on_leading_assistant: bool = False
    """Also train on assistant turns before the first user turn (by default they are context)."""

    def __post_init__(self) -> None:
        if self.train_on not in get_args(TrainOn):
            raise ValueError(f"train_on: {self.train_on!r} is not one of {get_args(TrainOn)}")
        for name in ("max_length", "chunk_rows"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
