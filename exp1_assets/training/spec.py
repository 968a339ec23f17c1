"""The training job's spec: everything one run needs, frozen, validated, written as JSON.

The Dagster asset builds a `TrainSpec` (usually `TrainSpec.from_size(size, **overrides)`), writes
it to a file and launches `python -m exp1_assets.training.train spec.json` under
`accelerate launch`. The same JSON is saved next to the final model (`train_spec.json`).

`spec_hash()` covers only what determines the training trajectory (shape, data, optimizer,
schedule, seeds) — not where the result goes nor how it is logged — so a relaunch of the same
spec finds its own checkpoints under `runs/model_checkpoint/<size>/<spec-hash>/`.

Secrets never go in here (W&B reads WANDB_API_KEY from the environment).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Literal, get_args

from exp1_assets.sizes import DEFAULT_ARCHITECTURE, SIZES, get_size
from exp1_assets.training.memory_plan import STRATEGIES, Strategy
from exp1_assets.training.model import (
    ARCHITECTURES, ATTENTION_IMPLEMENTATIONS, Architecture, AttentionImplementation,
)

Precision = Literal["auto", "bf16", "fp16", "fp32"]
ReportTo = Literal["none", "wandb"]
WandbMode = Literal["offline", "online", "disabled"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
REPORT_TO: tuple[str, ...] = get_args(ReportTo)
WANDB_MODES: tuple[str, ...] = get_args(WandbMode)

# Fields that do not change what the model learns: excluded from `spec_hash()`.
_NOT_HASHED = frozenset({
    "output_dir", "final_dir", "run_dir", "report_to", "wandb_project", "wandb_mode", "wandb_dir",
    "logging_steps", "save_total_limit", "dataloader_num_workers", "debug",
})
# Paths identify the data only when no content version is given (paths may move on a cluster).
_PATHS = ("train_path", "validation_path", "tokenizer_path")


@dataclass(frozen=True)
class DebugSpec:
    """Test-only faults and diagnostics; all off by default, never read from the environment.

    The suite drives the launcher's failure paths with these: a rank that raises, a rank that
    hangs, a kill in the middle of writing a checkpoint. A production run leaves them unset, and
    then no fault callback is installed at all.
    """

    fail_on_rank: int | None = None
    """Raise when training begins on this global rank (error reporting)."""
    hang_on_rank: int | None = None
    """Sleep forever when training begins on this global rank (stall detection)."""
    kill_during_save_at_step: int | None = None
    """Cut the weights of this step's checkpoint short, then SIGKILL the job (once per run dir)."""
    min_step_s: float | None = None
    """Pad every optimizer step to at least this many seconds, so a run outlasts a deadline on any machine."""
    rank_params: bool = False
    """Every rank writes its final parameters (its shards under FSDP) under `run_dir/debug`."""

    def __post_init__(self) -> None:
        for name in ("fail_on_rank", "hang_on_rank", "kill_during_save_at_step"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"debug.{name}: must be an integer >= 0 or None, got {value!r}")
        if self.min_step_s is not None and not self.min_step_s > 0:
            raise ValueError(f"debug.min_step_s: must be positive or None, got {self.min_step_s!r}")

    @property
    def injects_faults(self) -> bool:
        return any(v is not None for v in (self.fail_on_rank, self.hang_on_rank, self.kill_during_save_at_step,
                                           self.min_step_s))


@dataclass(frozen=True)
class TrainSpec:
    """One training run. Build it with `from_size` (the registry's per-size defaults) or
    `build_train_spec` (that, plus the packed data's shape and where things go)."""

    size: str
    """A key of the size registry (`exp1_assets.sizes.SIZES`)."""
    train_path: str
    """Packed training blocks (`train.arrow`)."""
    validation_path: str
    """Packed validation blocks (`validation.arrow`)."""
    tokenizer_path: str
    """A `from_pretrained` tokenizer folder."""
    output_dir: str
    """Where the job writes the final model (a staging dir that is renamed atomically)."""
    run_dir: str
    """Trainer checkpoints (resume points), `errors/rank<N>.txt`, logs."""
    max_steps: int | None
    """Optimizer steps; None trains `num_epochs` whole epochs instead."""
    num_epochs: float
    """Epochs to train when `max_steps` is None."""
    learning_rate: float
    """Peak learning rate (cosine schedule after warmup)."""
    per_device_batch: int
    """Blocks per device per micro-batch."""
    grad_accum: int
    """Micro-batches per optimizer step."""
    warmup_ratio: float
    """Warmup as a fraction of all steps, used when `warmup_steps` is None."""
    weight_decay: float
    """AdamW weight decay."""
    adam_beta1: float
    """AdamW beta1."""
    adam_beta2: float
    """AdamW beta2."""
    max_grad_norm: float
    """Gradient clipping norm."""
    max_length: int
    """Tokens per block; must equal the packed blocks' length."""
    gradient_checkpointing: bool
    """Recompute activations in the backward pass (less memory, ~30% more compute)."""
    dropout: float
    """Dropout everywhere (0 keeps SDPA on its fused kernel)."""
    final_dir: str | None = None
    """Where `output_dir` lives once the run commits; recorded in `train_spec.json` instead of it."""
    architecture: Architecture = DEFAULT_ARCHITECTURE
    """Model family: one of `training.model.ARCHITECTURES`."""
    attn_implementation: AttentionImplementation = "sdpa"
    """sdpa (exact packed mask), eager, or flash_attention_2 (varlen from position_ids; needs flash-attn)."""
    strategy: Strategy = "ddp"
    """ddp (every rank holds everything), fsdp_grad_op (FSDP2, gradients and optimizer states sharded,
    ZeRO-2 like) or fsdp_full (FSDP2, weights too, ZeRO-3 like). Checkpoints of one do not resume another."""
    compile: bool = False
    """torch.compile the model (the Trainer's `torch_compile`); bench/RESULTS.md says where it pays."""
    data_version: str | None = None
    """Content hash of packed data + tokenizer; keys the spec hash instead of the paths."""
    warmup_steps: int | None = None
    """Warmup in steps; None uses `warmup_ratio`."""
    save_steps: int = 100
    """Checkpoint (resume point) every this many steps."""
    save_total_limit: int = 2
    """Checkpoints kept in the run dir."""
    eval_steps: int = 100
    """Validation loss every this many steps."""
    logging_steps: int = 10
    """Progress line (loss, lr, tokens/s, ETA) every this many steps."""
    precision: Precision = "auto"
    """auto: bf16 where supported, fp16 on other CUDA devices, fp32 on CPU."""
    seed: int = 0
    """Model initialization and training seed."""
    data_seed: int = 0
    """Data order seed."""
    report_to: ReportTo = "none"
    """Experiment tracker: none or wandb."""
    wandb_project: str = "exp1"
    """W&B project."""
    wandb_mode: WandbMode = "offline"
    """W&B mode (offline: files under the run dir, `wandb sync` later)."""
    wandb_dir: str | None = None
    """W&B files; None: `<run_dir>/wandb`."""
    dataloader_num_workers: int = 0
    """DataLoader worker processes (packed blocks are memory-mapped: 0 is enough on CPU)."""
    debug: DebugSpec = DebugSpec()
    """Test-only faults and diagnostics (see `DebugSpec`)."""

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size: unknown model size {self.size!r}; valid sizes: {', '.join(SIZES)}")
        _one_of("architecture", self.architecture, ARCHITECTURES)
        _one_of("attn_implementation", self.attn_implementation, ATTENTION_IMPLEMENTATIONS)
        _one_of("strategy", self.strategy, STRATEGIES)
        _one_of("precision", self.precision, PRECISIONS)
        _one_of("report_to", self.report_to, REPORT_TO)
        _one_of("wandb_mode", self.wandb_mode, WANDB_MODES)
        for name in ("train_path", "validation_path", "tokenizer_path", "output_dir", "run_dir"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name}: must be a non-empty path string, got {getattr(self, name)!r}")
        for name in ("per_device_batch", "grad_accum", "max_length", "save_steps", "save_total_limit",
                     "eval_steps", "logging_steps", "learning_rate", "max_grad_norm"):
            _positive(name, getattr(self, name))
        for name in ("max_steps", "warmup_steps"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if self.max_steps is None and not self.num_epochs > 0:
            raise ValueError(f"num_epochs: must be positive when max_steps is None, got {self.num_epochs}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        for name in ("dataloader_num_workers", "seed", "data_seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        for name in ("adam_beta1", "adam_beta2", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}: must be in [0, 1), got {getattr(self, name)}")
        if not isinstance(self.debug, DebugSpec):
            raise ValueError(f"debug: must be a DebugSpec, got {type(self.debug).__name__}")
        max_positions = get_size(self.size).max_positions
        if self.max_length > max_positions:
            raise ValueError(
                f"max_length: {self.max_length} exceeds size {self.size!r}'s max_positions ({max_positions})"
            )

    @classmethod
    def from_size(cls, size: str, **overrides: Any) -> "TrainSpec":
        """A spec with the registry's per-size defaults, then `overrides` on top.

        Asking for `num_epochs` without `max_steps` trains whole epochs (the size's step count,
        if it has one, no longer applies); asking for both is ambiguous and refused.
        """
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainSpec field(s): {', '.join(sorted(unknown))}")
        if overrides.get("num_epochs") is not None:
            if overrides.get("max_steps") is not None:
                raise ValueError("max_steps and num_epochs: give one of them, not both")
            overrides = {**overrides, "max_steps": None}
        model_size = get_size(size)
        defaults: dict[str, Any] = dict(
            max_steps=model_size.max_steps,
            num_epochs=model_size.num_epochs,
            learning_rate=model_size.learning_rate,
            per_device_batch=model_size.per_device_batch,
            grad_accum=model_size.grad_accum,
            warmup_ratio=model_size.warmup_ratio,
            weight_decay=model_size.weight_decay,
            adam_beta1=model_size.betas[0],
            adam_beta2=model_size.betas[1],
            max_grad_norm=model_size.clip,
            max_length=model_size.max_length,
            gradient_checkpointing=model_size.gradient_checkpointing,
            dropout=model_size.dropout,
        )
        return cls(size=size, **{**defaults, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainSpec":
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"TrainSpec JSON must be an object, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainSpec field(s) in JSON: {', '.join(sorted(unknown))}")
        debug = data.get("debug")
        if isinstance(debug, dict):
            data["debug"] = DebugSpec(**debug)
        return cls(**data)

    @classmethod
    def read(cls, path: str | Path) -> "TrainSpec":
        try:
            return cls.from_json(Path(path).read_text())
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: invalid TrainSpec: {exc}") from exc

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path

    def as_published(self) -> "TrainSpec":
        """This spec as the committed model records it: `output_dir` is the final path, not staging."""
        if self.final_dir is None:
            return self
        return dataclasses.replace(self, output_dir=self.final_dir, final_dir=None)

    def spec_hash(self) -> str:
        """12 hex chars over the trajectory-determining fields (stable across processes).

        >>> a = TrainSpec.from_size("tiny", train_path="t", validation_path="v",
        ...     tokenizer_path="k", output_dir="o1", run_dir="r1", data_version="d")
        >>> a.spec_hash() == dataclasses.replace(a, output_dir="o2", logging_steps=1).spec_hash()
        True
        >>> a.spec_hash() == dataclasses.replace(a, learning_rate=5e-4).spec_hash()
        False
        """
        excluded = set(_NOT_HASHED) | (set(_PATHS) if self.data_version else set())
        payload = {k: v for k, v in self.to_dict().items() if k not in excluded}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: {value!r} is not one of {allowed}")


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}: must be positive, got {value!r}")


def build_train_spec(
    *,
    size: str,
    overrides: Mapping[str, Any],
    packed_dir: Path,
    tokenizer_dir: Path,
    output_dir: Path,
    final_dir: Path,
    runs_dir: Path,
) -> TrainSpec:
    """The spec of one run: the registry's defaults for `size`, the packed data's block length and
    content version, then `overrides` (the settings a user gave; None values are "not set").

    The run dir is `runs_dir/<spec hash>`, so relaunching the same spec resumes its checkpoints.
    """
    meta_path = packed_dir / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} does not exist: materialize 'packed_dataset' first")
    meta = json.loads(meta_path.read_text())
    version_path = packed_dir / "version.txt"
    given = {k: v for k, v in overrides.items() if v is not None}
    draft = TrainSpec.from_size(
        size,
        train_path=str(packed_dir / "train.arrow"),
        validation_path=str(packed_dir / "validation.arrow"),
        tokenizer_path=str(tokenizer_dir),
        data_version=version_path.read_text().strip() if version_path.is_file() else None,
        max_length=int(meta["max_length"]),
        output_dir=str(output_dir),
        final_dir=str(final_dir),
        run_dir="pending",  # keyed by the hash below, which does not cover the run dir
        **given,
    )
    return dataclasses.replace(draft, run_dir=str(runs_dir / draft.spec_hash()))
