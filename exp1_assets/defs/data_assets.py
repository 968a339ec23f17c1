"""The data half of the graph: raw conversations -> splits -> tokenizer -> packed blocks.

Thin assets: read config, call the plain-Python library under `exp1_assets.data`, write through
the artifact store (atomic), return metadata. Library imports happen inside the assets so the
code server never imports pyarrow/transformers just to list the graph.
"""


import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from exp1_assets.code_versions import code_version
from exp1_assets.data.conversation import LeadingAssistant
from exp1_assets.data.specs import IngestSpec, PackSpec, SourceKind, SplitSpec, TokenizerKind, TokenizerSpec, TrainOn
from exp1_assets.defs.config_overlay import given_fields, library_default
from exp1_assets.defs.store import ArtifactStore
from exp1_assets.hashing import content_digest, directory_digest
from exp1_assets.markdown import md_records_table, png_markdown
from exp1_assets.progress import ProgressLog

GROUP = "data"


class RawConversationsConfig(Config):
    """Overrides of `IngestSpec`; unset fields keep its defaults (the built-in corpus, 20,000 rows)."""

    source: SourceKind = Field(default=library_default(IngestSpec, "source"),
                               description="builtin (synthetic corpus, offline), local (files) or hub")
    path: Optional[str] = Field(default=None, description="local: .jsonl, .json array, .parquet, save_to_disk folder; globs ok")
    hub_id: Optional[str] = Field(default=None, description="hub: the dataset id (unset: teknium/OpenHermes-2.5)")
    max_samples: Optional[int] = Field(default=None, description="Read at most this many input rows (unset: all)")
    seed: Optional[int] = Field(default=None, description="Seed of the built-in generator")
    builtin_size: Optional[int] = Field(default=None, description="Conversations the built-in generator makes")
    max_chars: Optional[int] = Field(default=None, description="Longer conversations are quarantined as too_long")
    role_aliases: Optional[dict[str, str]] = Field(
        default=None, description="Extra raw role names -> system/user/assistant, over the built-in aliases")
    replace_default_roles: Optional[bool] = Field(default=None, description="Use only role_aliases")
    leading_assistant: LeadingAssistant = Field(
        default=library_default(IngestSpec, "leading_assistant"),
        description="keep: assistant turns before the first user turn are context, not trained; quarantine: reject")
    max_quarantine_fraction: Optional[float] = Field(default=None, description="Check: quarantined/input above this fails")


@asset(
    group_name=GROUP,
    code_version=code_version("exp1_assets.data.sources"),
    check_specs=[AssetCheckSpec("quarantine_rate_ok", asset="raw_conversations",
                                description="Share of quarantined input rows under the configured limit")],
    description="OpenHermes-format conversations, normalized; bad rows quarantined with reasons.",
)
def raw_conversations(
    context: AssetExecutionContext, config: RawConversationsConfig, store: ArtifactStore
) -> MaterializeResult:
    from exp1_assets.data.sources import ingest_conversations

    spec = IngestSpec(**given_fields(config))
    with store.staging("raw_conversations") as out:
        result = ingest_conversations(out_dir=out, progress=_progress(context), **spec.reader_arguments())
    total = result.rows + result.quarantined
    rate = result.quarantined / total if total else 0.0
    context.log.info(f"kept {result.rows} rows, quarantined {result.quarantined}: {result.quarantine_reasons}")
    return MaterializeResult(
        metadata={
            "rows": result.rows,
            "quarantined": result.quarantined,
            "quarantine_reasons": MetadataValue.json(result.quarantine_reasons),
            "source": spec.source,
            "path": spec.path or (spec.hub_id if spec.source == "hub" else ""),
            "data_version": result.data_version,
            "artifact": MetadataValue.path(str(store.path("raw_conversations"))),
            "preview": MetadataValue.md(_preview_table(result.preview)),
        },
        data_version=DataVersion(result.data_version),
        check_results=[AssetCheckResult(
            check_name="quarantine_rate_ok", passed=rate <= spec.max_quarantine_fraction,
            metadata={"quarantine_rate": rate, "limit": spec.max_quarantine_fraction},
        )],
    )


class SplitsConfig(Config):
    """Overrides of `SplitSpec`; unset fields keep its defaults (0.9 / 0.05 / 0.05, seed 0)."""

    train_fraction: Optional[float] = Field(default=None, description="Share of conversations in train")
    validation_fraction: Optional[float] = Field(default=None, description="Share in validation")
    test_fraction: Optional[float] = Field(default=None, description="Share in test")
    seed: Optional[int] = Field(default=None, description="Seed of the prompt hash that assigns splits")

    def spec(self) -> SplitSpec:
        defaults = SplitSpec()
        given = (self.train_fraction, self.validation_fraction, self.test_fraction)
        fractions = tuple(d if g is None else g for g, d in zip(given, defaults.fractions))
        return SplitSpec(fractions=fractions, seed=defaults.seed if self.seed is None else self.seed)


@asset(
    group_name=GROUP,
    deps=[raw_conversations],
    code_version=code_version("exp1_assets.data.splits"),
    check_specs=[AssetCheckSpec("no_split_overlap", asset="conversation_splits",
                                description="No validation or test prompt appears in train")],
    description="Deterministic train/validation/test split by prompt hash, duplicates removed.",
)
def conversation_splits(
    context: AssetExecutionContext, config: SplitsConfig, store: ArtifactStore
) -> MaterializeResult:
    from exp1_assets.data.splits import split_conversations

    source = store.path("raw_conversations") / "conversations.parquet"
    _require(source, "raw_conversations")
    with store.staging("conversation_splits") as out:
        result = split_conversations(conversations_path=source, out_dir=out, spec=config.spec(),
                                     progress=_progress(context))
    final = store.path("conversation_splits")
    overlap = sum(result.overlap.values())
    stats_rows = [{"split": s, **{k: v for k, v in st.items() if k != "roles"}, **st.get("roles", {})}
                  for s, st in result.stats.items()]
    return MaterializeResult(
        metadata={
            **{f"{split}_rows": n for split, n in result.counts.items()},
            "duplicates_removed": result.duplicates_removed,
            "overlap": MetadataValue.json(result.overlap),
            "stats": MetadataValue.md(md_records_table(stats_rows)),
            "artifact": MetadataValue.path(str(final)),
        },
        data_version=DataVersion(content_digest(final / f"{s}.parquet" for s in ("train", "validation", "test"))),
        check_results=[AssetCheckResult(check_name="no_split_overlap", passed=overlap == 0,
                                        metadata={"overlapping_prompts": overlap})],
    )


class TokenizerConfig(Config):
    """Overrides of `TokenizerSpec`; unset fields keep its defaults (a 4096-token trained BPE)."""

    kind: TokenizerKind = Field(default=library_default(TokenizerSpec, "kind"),
                                description="trained (byte-level BPE on train) or pretrained")
    vocab_size: Optional[int] = Field(default=None, description="Trained BPE: vocabulary size")
    pretrained: Optional[str] = Field(default=None, description="Pretrained: hub name or local folder")
    sample_rows: Optional[int] = Field(default=None, description="Trained BPE: learn from at most this many conversations")


@asset(
    group_name=GROUP,
    deps=[conversation_splits],
    code_version=code_version("exp1_assets.data.tokenizer"),
    check_specs=[AssetCheckSpec("tokenizer_roundtrip", asset="tokenizer",
                                description="decode(encode(x)) == x on validation text; ChatML tokens single ids")],
    description="Byte-level BPE (or a pretrained tokenizer) with ChatML tokens and chat template.",
)
def tokenizer(context: AssetExecutionContext, config: TokenizerConfig, store: ArtifactStore) -> MaterializeResult:
    from transformers import AutoTokenizer

    from exp1_assets.data.chat import IM_END, IM_START, render_chatml
    from exp1_assets.data.tokenizer import (
        iter_conversation_messages, load_pretrained_tokenizer, roundtrip_ok, train_bpe_tokenizer,
    )

    splits = store.path("conversation_splits")
    _require(splits / "train.parquet", "conversation_splits")
    samples = [render_chatml(m) for m in iter_conversation_messages(splits / "validation.parquet", sample_rows=200)]
    spec = TokenizerSpec(**given_fields(config))
    with store.staging("tokenizer") as out:
        if spec.kind == "trained":
            info = train_bpe_tokenizer(train_path=splits / "train.parquet", out_dir=out, progress=_progress(context),
                                       vocab_size=spec.vocab_size, sample_rows=spec.sample_rows)
        else:
            info = load_pretrained_tokenizer(name_or_path=spec.pretrained, out_dir=out, sample_texts=samples)
    final = store.path("tokenizer")
    loaded = AutoTokenizer.from_pretrained(str(final))
    ok, failures = roundtrip_ok(loaded, samples)
    specials_ok = all(len(loaded.encode(t, add_special_tokens=False)) == 1 for t in (IM_START, IM_END))
    return MaterializeResult(
        metadata={
            "vocab_size": info.vocab_size,
            "source": info.source,
            "bytes_per_token": float(info.bytes_per_token),
            "pad_token_id": info.pad_token_id,
            "eos_token_id": info.eos_token_id,
            "artifact": MetadataValue.path(str(final)),
        },
        data_version=DataVersion(directory_digest(final)),
        check_results=[AssetCheckResult(
            check_name="tokenizer_roundtrip", passed=not failures and specials_ok,
            metadata={"roundtrip_ok": ok, "roundtrip_failures": len(failures), "special_tokens_single": specials_ok},
        )],
    )


class PackedConfig(Config):
    """Overrides of `PackSpec`; unset fields keep its defaults (256-token blocks, assistant-only loss)."""

    max_length: Optional[int] = Field(default=None, description="Block length; the research plan used 2048 (tiny: 256)")
    train_on: TrainOn = Field(default=library_default(PackSpec, "train_on"),
                              description="assistant (responses only) or all")
    chunk_rows: Optional[int] = Field(default=None, description="Conversations tokenized and packed per chunk")
    train_on_leading_assistant: Optional[bool] = Field(
        default=None, description="Also train on assistant turns before the first user turn (unset: no, they are context)")


@asset(
    group_name=GROUP,
    deps=[tokenizer],
    code_version=code_version("exp1_assets.data.packing", "exp1_assets.data.blocks"),
    check_specs=[AssetCheckSpec("blocks_well_formed", asset="packed_dataset",
                                description="Each split meets the packed-block contract (data/blocks.py): "
                                            "row lengths, vocabulary, labels, positions, some trained token")],
    description="ChatML-rendered, tokenized, assistant-masked conversations packed into fixed blocks.",
)
def packed_dataset(context: AssetExecutionContext, config: PackedConfig, store: ArtifactStore) -> MaterializeResult:
    from exp1_assets.data.blocks import blocks_problem
    from exp1_assets.data.packing import pack_dataset

    spec = PackSpec(**given_fields(config))
    splits, tok = store.path("conversation_splits"), store.path("tokenizer")
    _require(tok / "tokenizer.json", "tokenizer")
    with store.staging("packed_dataset") as out:
        stats = pack_dataset(tokenizer_dir=tok, splits_dir=splits, out_dir=out, progress=_progress(context),
                             **asdict(spec))
        # Written with the blocks so that training can key its resumable runs on the content
        # without re-hashing gigabytes of blocks on every launch.
        version = content_digest([out / "train.arrow", out / "validation.arrow", tok / "tokenizer.json"])
        (out / "version.txt").write_text(version)
    final = store.path("packed_dataset")
    # The same validator training runs before it reads the blocks; None means the split is well formed.
    vocab_size = json.loads((final / "meta.json").read_text())["vocab_size"]
    problems = {s: blocks_problem(final / f"{s}.arrow", max_length=spec.max_length, vocab_size=vocab_size)
                for s in stats}
    train = stats["train"]
    metadata: dict[str, Any] = {
        "max_length": spec.max_length,
        **{f"{s}_blocks": st.blocks for s, st in stats.items()},
        **{f"{s}_tokens": st.tokens for s, st in stats.items()},
        "loss_fraction": float(train.loss_fraction),
        "padding_fraction": float(train.padding_fraction),
        "truncated_conversations": sum(s.truncated_conversations for s in stats.values()),
        "conversations_without_loss": sum(s.conversations_without_loss for s in stats.values()),
        "pieces_without_loss": sum(s.pieces_without_loss for s in stats.values()),  # not packed
        "length_analysis": MetadataValue.md(
            md_records_table([_flat_summary(s, st.length_summary) for s, st in stats.items()])),
        "length_histogram": MetadataValue.md(png_markdown(final / "length_histogram.png", alt="histogram")),
        "artifact": MetadataValue.path(str(final)),
    }
    return MaterializeResult(
        metadata=metadata,
        data_version=DataVersion(version),
        check_results=[AssetCheckResult(
            check_name="blocks_well_formed", passed=all(p is None for p in problems.values()),
            metadata={f"{s}_problem": p or "none" for s, p in problems.items()},
        )],
    )


def _flat_summary(split: str, summary: dict[str, Any]) -> dict[str, Any]:
    """One table row: the research scripts' `--analyze` numbers and bucket counts."""
    row = {"split": split, **{k: v for k, v in summary.items() if k != "buckets"}}
    row.update({f"n {label}": n for label, n in summary.get("buckets", {}).items()})
    return row


def _progress(context: AssetExecutionContext) -> ProgressLog:
    """Long data steps report rows done, rate and ETA to the run's log (at most every 15 s)."""
    return ProgressLog(emit=context.log.info)


def _require(path: Path, upstream: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: materialize '{upstream}' first")


def _preview_table(rows: list[dict[str, Any]]) -> str:
    flat = []
    for row in rows[:5]:
        messages = row.get("messages") or []
        first = next((m["content"] for m in messages if m["role"] == "user"), "")
        last = next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), "")
        flat.append({"id": row.get("id"), "turns": len(messages), "task": row.get("task") or "",
                     "user": first[:80], "assistant": last[:80]})
    return md_records_table(flat)
