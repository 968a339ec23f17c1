"""`model_checkpoint[size]`: one from-scratch training run per model size, launched, not run here.

The asset builds a `TrainSpec`, writes it beside the run, and hands it to the launcher; the
training loop lives in `exp1_assets.training.train`, in another process tree (maybe on another
machine). Trainer checkpoints live in a run directory keyed by the spec's hash, so a retry or a
re-materialization of the same spec resumes instead of starting over.
"""


import json
import math
import os
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    Backoff,
    Config,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
)
from pydantic import Field

from exp1_assets.defs.data_assets import packed_dataset
from exp1_assets.defs.launcher import JobLauncher
from exp1_assets.defs.partitions import size_partitions
from exp1_assets.defs.store import ArtifactStore
from exp1_assets.defs.versions import code_version

TRAIN_MODULE = "exp1_assets.training.train"


def training_retries() -> int:
    """How often a training run that died (killed, OOM, node lost) is retried: `EXP1_TRAIN_RETRIES`.

    Each retry resumes from the latest checkpoint. Deterministic failures (a bad config, a job
    that rejects its spec) raise `Failure(allow_retries=False)` and are never retried.
    """
    raw = os.environ.get("EXP1_TRAIN_RETRIES", "1")
    try:
        retries = int(raw)
    except ValueError:
        raise ValueError(f"EXP1_TRAIN_RETRIES: {raw!r} is not an integer") from None
    if retries < 0:
        raise ValueError(f"EXP1_TRAIN_RETRIES: must be >= 0, got {retries}")
    return retries


class TrainConfig(Config):
    """Overrides of the size registry's defaults; 0 / empty keeps the registry's value."""

    max_steps: int = Field(default=0, description="Optimizer steps (0 = the size's default)")
    num_epochs: float = Field(default=0.0, description="Train whole epochs instead of max_steps (> 0)")
    learning_rate: float = 0.0
    per_device_batch: int = 0
    grad_accum: int = 0
    save_steps: int = Field(default=100, description="Checkpoint (resume point) every this many steps")
    save_total_limit: int = 2
    eval_steps: int = 100
    logging_steps: int = 10
    architecture: str = Field(default="", description="'llama' (default) or 'gpt2'")
    precision: str = Field(default="auto", description="auto | bf16 | fp16 | fp32")
    gradient_checkpointing: str = Field(default="", description="'on' / 'off' (empty = the size's default)")
    dropout: float = -1.0
    seed: int = 0
    num_processes: int = Field(default=0, description="Ranks per machine (0 = the launcher's default)")
    wandb: bool = Field(default=False, description="Report to Weights & Biases (WANDB_MODE offline by default)")
    wandb_project: str = "exp1"
    wandb_mode: str = "offline"


def build_train_spec(config: TrainConfig, *, size: str, store: ArtifactStore, output_dir: str) -> Any:
    """The spec for this size: registry defaults, the packed data's shape, then config overrides."""
    from exp1_assets.training.spec import TrainSpec

    # 0 means "the size's default" below; a negative number is a typo, not a default (a negative
    # max_steps would otherwise silently switch to whole-epoch training).
    for name in ("max_steps", "per_device_batch", "grad_accum", "learning_rate"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name}: must be positive (or 0 for the size's default), got {getattr(config, name)}")
    packed = store.path("packed_dataset")
    meta = json.loads((packed / "meta.json").read_text())
    overrides: dict[str, Any] = {
        "train_path": str(packed / "train.arrow"),
        "validation_path": str(packed / "validation.arrow"),
        "tokenizer_path": str(store.path("tokenizer")),
        "data_version": (packed / "version.txt").read_text().strip(),
        "max_length": int(meta["max_length"]),
        "save_steps": config.save_steps, "save_total_limit": config.save_total_limit,
        "eval_steps": config.eval_steps, "logging_steps": config.logging_steps,
        "precision": config.precision, "seed": config.seed,
        "report_to": "wandb" if config.wandb else "none",
        "wandb_project": config.wandb_project, "wandb_mode": config.wandb_mode,
        "output_dir": output_dir,
        "run_dir": "",  # filled below, once the hash is known
    }
    optional = {
        "max_steps": config.max_steps, "learning_rate": config.learning_rate,
        "per_device_batch": config.per_device_batch, "grad_accum": config.grad_accum,
        "architecture": config.architecture,
    }
    overrides.update({k: v for k, v in optional.items() if v})
    if config.num_epochs > 0:
        overrides.update(max_steps=0, num_epochs=config.num_epochs)
    if config.dropout >= 0:
        overrides["dropout"] = config.dropout
    if config.gradient_checkpointing:
        if config.gradient_checkpointing not in ("on", "off"):
            raise ValueError(f"gradient_checkpointing: {config.gradient_checkpointing!r} is not 'on' or 'off'")
        overrides["gradient_checkpointing"] = config.gradient_checkpointing == "on"
    draft = TrainSpec.from_size(size, **{**overrides, "run_dir": "pending"})
    run_dir = store.run_dir("model_checkpoint", size, key=draft.spec_hash())
    return TrainSpec.from_size(size, **{**overrides, "run_dir": str(run_dir)})


@asset(
    group_name="training",
    partitions_def=size_partitions,
    deps=[packed_dataset],
    pool="gpu",
    code_version=code_version("training/train.py", "training/model.py", "training/spec.py", "training/integrity.py",
                              "training/callbacks.py", "sizes.py"),
    retry_policy=RetryPolicy(max_retries=training_retries(), delay=5, backoff=Backoff.LINEAR),
    check_specs=[
        AssetCheckSpec("loss_finite", asset="model_checkpoint", description="Final losses are finite"),
        AssetCheckSpec("validation_loss_decreased", asset="model_checkpoint",
                       description="Validation loss after training < before training"),
    ],
    description="A GPT-style model trained from scratch on the packed blocks, one per model size.",
)
def model_checkpoint(
    context: AssetExecutionContext, config: TrainConfig, store: ArtifactStore, launcher: JobLauncher
) -> MaterializeResult:
    size = context.partition_key
    with store.staging("model_checkpoint", size) as out:
        try:
            spec = build_train_spec(config, size=size, store=store, output_dir=str(out))
        except (ValueError, FileNotFoundError) as error:
            # A bad config or a missing upstream fails the same way on every attempt: no retry.
            raise Failure(f"model_checkpoint[{size}]: {error}", allow_retries=False) from error
        spec_path = _write_spec(spec)
        context.log.info(f"training {size} (spec {spec.spec_hash()}), run dir {spec.run_dir}")
        reported = launcher.run(context, module=TRAIN_MODULE, spec_path=spec_path,
                                run_dir=Path(spec.run_dir), num_processes=config.num_processes or None)
        result = json.loads((out / "train_result.json").read_text())
    pruned = store.prune_run_dirs("model_checkpoint", size, current=Path(spec.run_dir))
    if pruned:
        context.log.info(f"removed {len(pruned)} older run dir(s) (keep_run_dirs={store.keep_run_dirs}): "
                         + ", ".join(p.name for p in pruned))
    return _checkpoint_result(result, reported=reported, store=store, size=size,
                              extra_metadata=_size_metadata(spec, result))


def _size_metadata(spec: Any, result: dict[str, Any]) -> dict[str, Any]:
    """The model's exact size for the real vocabulary, and what training it costs in memory."""
    from transformers import AutoTokenizer

    from exp1_assets.sizes import get_size, memory_estimate

    vocab = len(AutoTokenizer.from_pretrained(spec.tokenizer_path))
    precision = result.get("precision", "fp32") if result.get("precision") in ("fp32", "bf16", "fp16") else "fp32"
    memory = memory_estimate(get_size(spec.size), vocab_size=vocab, architecture=spec.architecture,
                             batch=spec.per_device_batch, seq_len=spec.max_length, precision=precision)
    gib = {k[:-4]: v for k, v in memory.items() if k.endswith("_gib")}
    return {
        "vocab_size": vocab,
        "architecture": spec.architecture,
        "memory_estimate_gib": MetadataValue.json(gib),
        "memory_total_gib": float(memory["total_gib"]),
        "train_spec": MetadataValue.json(spec.to_dict()),
    }


def _checkpoint_result(result: dict[str, Any], *, reported: list[Any], store: ArtifactStore,
                       size: str, extra_metadata: dict[str, Any]) -> MaterializeResult:
    metadata: dict[str, Any] = dict(extra_metadata)
    data_version = None
    for item in reported:  # what rank 0 reported through Pipes (numbers + loss curve)
        metadata.update(item.metadata or {})
        data_version = item.data_version or data_version
    final = store.path("model_checkpoint", size)
    metadata["artifact"] = MetadataValue.path(str(final))
    metadata["resumed"] = result.get("resumed_from_step") is not None
    losses = [result.get("final_train_loss"), result.get("val_loss_before"), result.get("val_loss_after")]
    finite = all(isinstance(x, (int, float)) and math.isfinite(x) for x in losses)
    decreased = finite and result["val_loss_after"] < result["val_loss_before"]
    return MaterializeResult(
        metadata=metadata,
        data_version=data_version if isinstance(data_version, DataVersion) else
        (DataVersion(str(data_version)) if data_version else None),
        check_results=[
            AssetCheckResult(check_name="loss_finite", passed=finite,
                             metadata={"final_train_loss": _num(losses[0]), "val_loss_after": _num(losses[2])}),
            AssetCheckResult(check_name="validation_loss_decreased", passed=decreased,
                             metadata={"val_loss_before": _num(losses[1]), "val_loss_after": _num(losses[2])}),
        ],
    )


def _write_spec(spec: Any) -> Path:
    path = Path(spec.run_dir) / "spec.json"
    spec.write(path)
    return path


def _num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) else float("nan")
