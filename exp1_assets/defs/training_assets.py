"""`model_checkpoint[size]`: one from-scratch training run per model size, launched, not run here.

The asset builds a `TrainSpec`, writes it beside the run, and hands it to the launcher; the
training loop lives in `exp1_assets.training.train`, in another process tree (maybe on another
machine). Trainer checkpoints live in a run directory keyed by the spec's hash, so a retry or a
re-materialization of the same spec resumes instead of starting over.
"""


import json
import math
from pathlib import Path
from typing import Any, Optional

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

from exp1_assets.code_versions import code_version
from exp1_assets.defs.config_overlay import given_fields, library_default
from exp1_assets.defs.data_assets import packed_dataset
from exp1_assets.defs.launcher import JobLauncher
from exp1_assets.defs.partitions import size_partitions
from exp1_assets.defs.store import ArtifactStore
from exp1_assets.settings import Settings
from exp1_assets.training.model import Architecture, AttentionImplementation
from exp1_assets.training.planned_spec import PlanRequest, StrategyChoice
from exp1_assets.training.spec import DebugSpec, Precision, ReportTo, TrainSpec, WandbMode

TRAIN_MODULE = "exp1_assets.training.train"


class TrainDebugConfig(Config):
    """Test-only faults (`exp1_assets.training.spec.DebugSpec`); leave unset in real runs."""

    fail_on_rank: Optional[int] = Field(default=None, description="Raise when training begins on this rank")
    hang_on_rank: Optional[int] = Field(default=None, description="Hang when training begins on this rank")
    kill_during_save_at_step: Optional[int] = Field(
        default=None, description="Cut this step's checkpoint short, then SIGKILL the job (once per run dir)")
    min_step_s: Optional[float] = Field(default=None, description="Pad every optimizer step to at least this long")
    rank_params: Optional[bool] = Field(default=None, description="Every rank writes its final parameters")


class TrainConfig(Config):
    """Overrides of the training spec. A field left unset (None) keeps the default: the size
    registry's (`exp1_assets.sizes`) for the shape-dependent ones, `TrainSpec`'s for the rest."""

    max_steps: Optional[int] = Field(default=None, description="Optimizer steps (unset: the size's)")
    num_epochs: Optional[float] = Field(default=None, description="Train whole epochs instead of max_steps")
    learning_rate: Optional[float] = Field(default=None, description="Peak learning rate (unset: the size's)")
    per_device_batch: Optional[int] = Field(default=None, description="Blocks per device per micro-batch")
    grad_accum: Optional[int] = Field(default=None, description="Micro-batches per optimizer step")
    warmup_ratio: Optional[float] = Field(default=None, description="Warmup as a fraction of all steps")
    save_steps: Optional[int] = Field(default=None, description="Checkpoint (resume point) every this many steps")
    save_total_limit: Optional[int] = Field(default=None, description="Checkpoints kept in the run dir")
    eval_steps: Optional[int] = Field(default=None, description="Validation loss every this many steps")
    logging_steps: Optional[int] = Field(default=None, description="Progress line every this many steps")
    architecture: Architecture = Field(default=library_default(TrainSpec, "architecture"), description="Model family")
    attn_implementation: AttentionImplementation = Field(
        default=library_default(TrainSpec, "attn_implementation"),
        description="sdpa (exact packed mask), eager, or flash_attention_2 (needs flash-attn on the GPU nodes)")
    precision: Precision = Field(default=library_default(TrainSpec, "precision"),
                                 description="auto: bf16 where supported, fp16 on other CUDA devices, fp32 on CPU")
    gradient_checkpointing: Optional[bool] = Field(default=None, description="Recompute activations (unset: the size's)")
    dropout: Optional[float] = Field(default=None, description="Dropout everywhere (unset: the size's, 0)")
    seed: Optional[int] = Field(default=None, description="Initialization and training seed")
    data_seed: Optional[int] = Field(default=None, description="Data order seed")
    report_to: ReportTo = Field(default=library_default(TrainSpec, "report_to"), description="Experiment tracker")
    wandb_project: Optional[str] = Field(default=None, description="W&B project")
    wandb_mode: WandbMode = Field(default=library_default(TrainSpec, "wandb_mode"),
                                  description="W&B mode (offline: files under the run dir, `wandb sync` later)")
    num_processes: Optional[int] = Field(default=None, description="Ranks per machine (unset: the launcher's)")
    strategy: StrategyChoice = Field(
        default=library_default(PlanRequest, "strategy"),
        description="auto: the memory plan's cheapest fit (ddp, fsdp_grad_op = FSDP2 ZeRO-2 like, fsdp_full = "
                    "ZeRO-3 like); or force one")
    plan_devices: Optional[int] = Field(
        default=None, description="Plan for this many devices instead of the launcher's ranks (see the plan's metadata)")
    plan_device_memory_gib: Optional[float] = Field(
        default=None, description="Plan for this much memory per device instead of the launcher's machine")
    debug: Optional[TrainDebugConfig] = Field(default=None, description="Test-only faults; leave unset")

    def spec_overrides(self) -> dict[str, Any]:
        """The spec fields this config sets (num_processes is the launcher's, not the spec's)."""
        given = given_fields(self, exclude=("num_processes", "debug", "strategy", "plan_devices",
                                             "plan_device_memory_gib"))
        if self.debug is not None:
            given["debug"] = DebugSpec(**given_fields(self.debug))
        return given

    def plan_request(self) -> PlanRequest:
        return PlanRequest(strategy=self.strategy, devices=self.plan_devices,
                           device_memory_gib=self.plan_device_memory_gib)


# Read when the definitions load: the retry policy is part of the asset's definition.
_SETTINGS = Settings.from_environ()


@asset(
    group_name="training",
    partitions_def=size_partitions,
    deps=[packed_dataset],
    pool="gpu",
    code_version=code_version(TRAIN_MODULE, "exp1_assets.training.planned_spec"),
    retry_policy=RetryPolicy(max_retries=_SETTINGS.train_retries, delay=_SETTINGS.train_retry_delay_s,
                             backoff=Backoff.LINEAR),
    check_specs=[
        # Partitioned like the asset, so each size keeps its own result (else the UI shows only the latest size's).
        AssetCheckSpec("loss_finite", asset="model_checkpoint", description="Final losses are finite",
                       partitions_def=size_partitions),
        AssetCheckSpec("validation_loss_decreased", asset="model_checkpoint",
                       description="Validation loss after training < before training", partitions_def=size_partitions),
    ],
    description="A GPT-style model trained from scratch on the packed blocks, one per model size.",
)
def model_checkpoint(
    context: AssetExecutionContext, config: TrainConfig, store: ArtifactStore, launcher: JobLauncher
) -> MaterializeResult:
    from exp1_assets.training.planned_spec import build_planned_spec

    size = context.partition_key
    final = store.path("model_checkpoint", size)
    with store.staging("model_checkpoint", size) as out:
        try:
            spec, plan = build_planned_spec(
                size=size, overrides=config.spec_overrides(), request=config.plan_request(),
                detected=launcher.machine(num_processes=config.num_processes),
                packed_dir=store.path("packed_dataset"), tokenizer_dir=store.path("tokenizer"), output_dir=out,
                final_dir=final, runs_dir=store.run_dir("model_checkpoint", size))
        except (ValueError, TypeError, FileNotFoundError) as error:
            # A bad config, a missing upstream or a run that cannot fit fails the same way on every
            # attempt, and before anything is launched: no retry.
            raise Failure(f"model_checkpoint[{size}]: {error}", allow_retries=False) from error
        spec_path = spec.write(Path(spec.run_dir) / "spec.json")
        if plan is None:
            context.log.warning("no memory plan: the devices' memory is unknown (set the launcher's "
                                "device_memory_gib or this config's plan_device_memory_gib)")
        else:
            context.log.info(f"memory plan on {plan.machine.label}: {plan.strategy}, micro-batch {plan.micro_batch} "
                             f"x {plan.grad_accum}, checkpointing {'on' if plan.gradient_checkpointing else 'off'}, "
                             f"~{plan.total_gib:g} GiB per device")
        context.log.info(f"training {size} (spec {spec.spec_hash()}, {spec.strategy}), run dir {spec.run_dir}")
        reported = launcher.run(context, module=TRAIN_MODULE, spec_path=spec_path,
                                run_dir=Path(spec.run_dir), num_processes=config.num_processes)
        result = json.loads((out / "train_result.json").read_text())
    pruned = store.prune_run_dirs("model_checkpoint", size, current=Path(spec.run_dir))
    if pruned:
        context.log.info(f"removed {len(pruned)} older run dir(s) (keep_run_dirs={store.keep_run_dirs}): "
                         + ", ".join(p.name for p in pruned))
    return _checkpoint_result(result, reported=reported, store=store, size=size,
                              extra_metadata=_spec_metadata(spec.as_published(), plan))


def _spec_metadata(spec: Any, plan: Any) -> dict[str, Any]:
    """How the run was set up: its spec, and the memory plan it followed (strategy, GiB per device by part)."""
    metadata: dict[str, Any] = {"architecture": spec.architecture, "strategy": spec.strategy,
                                "train_spec": MetadataValue.json(spec.to_dict())}
    if plan is not None:
        metadata["memory_plan"] = MetadataValue.json(plan.to_dict())
        metadata["memory_per_device_gib"] = plan.total_gib
    return metadata


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


def _num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) else float("nan")
