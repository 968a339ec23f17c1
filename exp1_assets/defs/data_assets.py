"""The data half of the graph: raw conversations -> splits -> tokenizer -> packed blocks.

Thin assets: read config, call the plain-Python library under `exp1_assets.data`, write through
the artifact store (atomic), return metadata. Library imports happen inside the assets so the
code server never imports pyarrow/transformers just to list the graph.
"""


from pathlib import Path
from typing import Any

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

from exp1_assets.defs.store import ArtifactStore
from exp1_assets.defs.versions import code_version, file_digest

GROUP = "data"


class RawConversationsConfig(Config):
    source: str = Field(default="builtin", description="'builtin' (synthetic corpus), 'local' or 'hub'")
    path: str = Field(default="", description="local: .jsonl, .json array, .parquet, save_to_disk folder; globs ok")
    hub_id: str = Field(default="teknium/OpenHermes-2.5", description="hub: the dataset id")
    max_samples: int = Field(default=0, description="Read at most this many input rows (0 = all)")
    seed: int = Field(default=0, description="Seed of the built-in generator")
    builtin_size: int = Field(default=20_000, description="Conversations the built-in generator makes")
    max_chars: int = Field(default=100_000, description="Longer conversations are quarantined as too_long")
    max_quarantine_fraction: float = Field(default=0.2, description="Check: quarantined/input above this fails")


@asset(
    group_name=GROUP,
    code_version=code_version("data/sources.py", "data/conversation.py", "data/builtin_corpus.py"),
    check_specs=[AssetCheckSpec("quarantine_rate_ok", asset="raw_conversations",
                                description="Share of quarantined input rows under the configured limit")],
    description="OpenHermes-format conversations, normalized; bad rows quarantined with reasons.",
)
def raw_conversations(
    context: AssetExecutionContext, config: RawConversationsConfig, store: ArtifactStore
) -> MaterializeResult:
    from exp1_assets.data.sources import ingest_conversations

    if config.source not in ("builtin", "local", "hub"):
        raise ValueError(f"raw_conversations.source: {config.source!r} is not builtin, local or hub")
    with store.staging("raw_conversations") as out:
        result = ingest_conversations(
            source=config.source, path=config.path or None, hub_id=config.hub_id,
            max_samples=config.max_samples or None, seed=config.seed, out_dir=out,
            builtin_size=config.builtin_size, max_chars=config.max_chars,
        )
    total = result.rows + result.quarantined
    rate = result.quarantined / total if total else 0.0
    context.log.info(f"kept {result.rows} rows, quarantined {result.quarantined}: {result.quarantine_reasons}")
    return MaterializeResult(
        metadata={
            "rows": result.rows,
            "quarantined": result.quarantined,
            "quarantine_reasons": MetadataValue.json(result.quarantine_reasons),
            "source": config.source,
            "path": config.path or (config.hub_id if config.source == "hub" else ""),
            "data_version": result.data_version,
            "artifact": MetadataValue.path(str(store.path("raw_conversations"))),
            "preview": MetadataValue.md(_preview_table(result.preview)),
        },
        data_version=DataVersion(result.data_version),
        check_results=[AssetCheckResult(
            check_name="quarantine_rate_ok", passed=rate <= config.max_quarantine_fraction,
            metadata={"quarantine_rate": rate, "limit": config.max_quarantine_fraction},
        )],
    )


class SplitsConfig(Config):
    train_fraction: float = 0.9
    validation_fraction: float = 0.05
    test_fraction: float = 0.05
    seed: int = 0


@asset(
    group_name=GROUP,
    deps=[raw_conversations],
    code_version=code_version("data/splits.py"),
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
        result = split_conversations(
            conversations_path=source, out_dir=out, seed=config.seed,
            fractions=(config.train_fraction, config.validation_fraction, config.test_fraction),
        )
    final = store.path("conversation_splits")
    overlap = sum(result.overlap.values())
    stats_rows = [{"split": s, **{k: v for k, v in st.items() if k != "roles"}, **st.get("roles", {})}
                  for s, st in result.stats.items()]
    return MaterializeResult(
        metadata={
            **{f"{split}_rows": n for split, n in result.counts.items()},
            "duplicates_removed": result.duplicates_removed,
            "overlap": MetadataValue.json(result.overlap),
            "stats": MetadataValue.md(_md_table(stats_rows)),
            "artifact": MetadataValue.path(str(final)),
        },
        data_version=DataVersion(file_digest(*(final / f"{s}.parquet" for s in ("train", "validation", "test")))),
        check_results=[AssetCheckResult(check_name="no_split_overlap", passed=overlap == 0,
                                        metadata={"overlapping_prompts": overlap})],
    )


class TokenizerConfig(Config):
    kind: str = Field(default="trained", description="'trained' (byte-level BPE on train) or 'pretrained'")
    vocab_size: int = Field(default=4096, description="Trained BPE: vocabulary size")
    pretrained: str = Field(default="gpt2", description="Pretrained: hub name or local folder")
    sample_rows: int = Field(default=200_000, description="Train the BPE on at most this many conversations")


@asset(
    group_name=GROUP,
    deps=[conversation_splits],
    code_version=code_version("data/tokenizer.py", "data/chat.py"),
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
    with store.staging("tokenizer") as out:
        if config.kind == "trained":
            info = train_bpe_tokenizer(train_path=splits / "train.parquet", out_dir=out,
                                       vocab_size=config.vocab_size, sample_rows=config.sample_rows)
        elif config.kind == "pretrained":
            info = load_pretrained_tokenizer(name_or_path=config.pretrained, out_dir=out, sample_texts=samples)
        else:
            raise ValueError(f"tokenizer.kind: {config.kind!r} is not 'trained' or 'pretrained'")
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
        data_version=DataVersion(file_digest(*sorted(p for p in final.iterdir() if p.is_file()))),
        check_results=[AssetCheckResult(
            check_name="tokenizer_roundtrip", passed=not failures and specials_ok,
            metadata={"roundtrip_ok": ok, "roundtrip_failures": len(failures), "special_tokens_single": specials_ok},
        )],
    )


class PackedConfig(Config):
    max_length: int = Field(default=256, description="Block length; the research plan used 2048 (tiny: 256)")
    train_on: str = Field(default="assistant", description="'assistant' (responses only) or 'all'")
    chunk_rows: int = Field(default=20_000, description="Conversations tokenized and packed per chunk")


@asset(
    group_name=GROUP,
    deps=[tokenizer],
    code_version=code_version("data/packing.py", "data/chat.py", "data/length_stats.py"),
    check_specs=[AssetCheckSpec("blocks_well_formed", asset="packed_dataset",
                                description="Every block exactly max_length; loss-carrying fraction > 0")],
    description="ChatML-rendered, tokenized, assistant-masked conversations packed into fixed blocks.",
)
def packed_dataset(context: AssetExecutionContext, config: PackedConfig, store: ArtifactStore) -> MaterializeResult:
    import pyarrow as pa

    from exp1_assets.data.length_stats import png_markdown
    from exp1_assets.data.packing import pack_dataset

    if config.train_on not in ("assistant", "all"):
        raise ValueError(f"packed_dataset.train_on: {config.train_on!r} is not 'assistant' or 'all'")
    splits, tok = store.path("conversation_splits"), store.path("tokenizer")
    _require(tok / "tokenizer.json", "tokenizer")
    with store.staging("packed_dataset") as out:
        stats = pack_dataset(tokenizer_dir=tok, splits_dir=splits, out_dir=out, max_length=config.max_length,
                             train_on=config.train_on, chunk_rows=config.chunk_rows)
        # Written with the blocks so that training can key its resumable runs on the content
        # without re-hashing gigabytes of blocks on every launch.
        version = file_digest(out / "train.arrow", out / "validation.arrow", tok / "tokenizer.json")
        (out / "version.txt").write_text(version)
    final = store.path("packed_dataset")
    lengths_ok = all(_block_lengths_ok(final / f"{s}.arrow", config.max_length, pa) for s in stats)
    loss_ok = all(s.loss_tokens > 0 for s in stats.values())
    train = stats["train"]
    metadata: dict[str, Any] = {
        "max_length": config.max_length,
        **{f"{s}_blocks": st.blocks for s, st in stats.items()},
        **{f"{s}_tokens": st.tokens for s, st in stats.items()},
        "loss_fraction": float(train.loss_fraction),
        "padding_fraction": float(train.padding_fraction),
        "truncated_conversations": sum(s.truncated_conversations for s in stats.values()),
        "conversations_without_loss": sum(s.conversations_without_loss for s in stats.values()),
        "pieces_without_loss": sum(s.pieces_without_loss for s in stats.values()),  # not packed
        "length_analysis": MetadataValue.md(_md_table([_flat_summary(s, st.length_summary) for s, st in stats.items()])),
        "length_histogram": MetadataValue.md(png_markdown(final / "length_histogram.png")),
        "artifact": MetadataValue.path(str(final)),
    }
    return MaterializeResult(
        metadata=metadata,
        data_version=DataVersion(version),
        check_results=[AssetCheckResult(check_name="blocks_well_formed", passed=lengths_ok and loss_ok,
                                        metadata={"all_blocks_max_length": lengths_ok, "loss_tokens_present": loss_ok})],
    )


def _block_lengths_ok(path: Path, max_length: int, pa: Any) -> bool:
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_stream(source)
        for batch in reader:
            lengths = batch.column("input_ids").value_lengths()
            if pa.compute.any(pa.compute.not_equal(lengths, max_length)).as_py():
                return False
    return True


def _flat_summary(split: str, summary: dict[str, Any]) -> dict[str, Any]:
    """One table row: the research scripts' `--analyze` numbers and bucket counts."""
    row = {"split": split, **{k: v for k, v in summary.items() if k != "buckets"}}
    row.update({f"n {label}": n for label, n in summary.get("buckets", {}).items()})
    return row


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
    return _md_table(flat)


def _md_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(empty)"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    def cell(v: Any) -> str:
        text = f"{v:.4g}" if isinstance(v, float) else str(v if v is not None else "")
        return text.replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
