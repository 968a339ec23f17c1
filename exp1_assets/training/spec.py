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
from typing import Any

from exp1_assets.sizes import DEFAULT_ARCHITECTURE, SIZES, get_size
from exp1_assets.training.model import ARCHITECTURES

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
REPORT_TO = ("none", "wandb")
WANDB_MODES = ("offline", "online", "disabled")

# Fields that do not change what the model learns: excluded from `spec_hash()`.
_NOT_HASHED = frozenset({
    "output_dir", "run_dir", "report_to", "wandb_project", "wandb_mode", "wandb_dir",
    "logging_steps", "save_total_limit", "dataloader_num_workers", "debug_rank_hashes",
})
# Paths identify the data only when no content version is given (paths may move on a cluster).
_PATHS = ("train_path", "validation_path", "tokenizer_path")


@dataclass(frozen=True)
class TrainSpec:
    size: str
    train_path: str
    validation_path: str
    tokenizer_path: str
    output_dir: str  # the final model; the launcher passes a temp dir and renames it atomically
    run_dir: str  # Trainer checkpoints (resume) + errors/rank<N>.txt
    architecture: str = DEFAULT_ARCHITECTURE
    data_version: str = ""  # content hash of packed data + tokenizer; keys the spec hash
    max_steps: int = 300  # <= 0: train num_epochs instead
    num_epochs: float = 1.0
    learning_rate: float = 1e-3
    per_device_batch: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.03  # used when warmup_steps == 0
    warmup_steps: int = 0
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    max_grad_norm: float = 1.0
    max_length: int = 256  # must equal the packed blocks' length
    save_steps: int = 100
    save_total_limit: int = 2
    eval_steps: int = 100
    logging_steps: int = 10
    precision: str = "auto"  # auto: bf16 where supported, fp16 on other CUDA, fp32 on CPU
    gradient_checkpointing: bool = False
    dropout: float = 0.0
    seed: int = 0
    data_seed: int = 0
    report_to: str = "none"
    wandb_project: str = "exp1"
    wandb_mode: str = "offline"
    wandb_dir: str = ""  # empty: <run_dir>/wandb
    dataloader_num_workers: int = 0
    debug_rank_hashes: bool = False  # every rank writes a hash of its final params to run_dir

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size: unknown model size {self.size!r}; valid sizes: {', '.join(SIZES)}")
        _one_of("architecture", self.architecture, ARCHITECTURES)
        _one_of("precision", self.precision, PRECISIONS)
        _one_of("report_to", self.report_to, REPORT_TO)
        _one_of("wandb_mode", self.wandb_mode, WANDB_MODES)
        for name in ("train_path", "validation_path", "tokenizer_path", "output_dir", "run_dir"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name}: must be a non-empty path string, got {getattr(self, name)!r}")
        for name in ("per_device_batch", "grad_accum", "max_length", "save_steps", "save_total_limit",
                     "eval_steps", "logging_steps"):
            _positive(name, getattr(self, name))
        for name in ("learning_rate", "max_grad_norm"):
            _positive(name, getattr(self, name))
        if self.max_steps <= 0 and not self.num_epochs > 0:
            raise ValueError(f"num_epochs: must be positive when max_steps <= 0, got {self.num_epochs}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        for name in ("warmup_steps", "dataloader_num_workers", "seed", "data_seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        for name in ("adam_beta1", "adam_beta2", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}: must be in [0, 1), got {getattr(self, name)}")
        max_positions = get_size(self.size).max_positions
        if self.max_length > max_positions:
            raise ValueError(
                f"max_length: {self.max_length} exceeds size {self.size!r}'s max_positions ({max_positions})"
            )

    @classmethod
    def from_size(cls, size: str, **overrides: Any) -> "TrainSpec":
        """A spec with the registry's per-size defaults, then `overrides` on top."""
        model_size = get_size(size)
        defaults: dict[str, Any] = dict(
            size=size,
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
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainSpec field(s): {', '.join(sorted(unknown))}")
        return cls(**{**defaults, **overrides})

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
        return cls(**data)

    @classmethod
    def read(cls, path: str | Path) -> "TrainSpec":
        try:
            return cls.from_json(Path(path).read_text())
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: invalid TrainSpec: {exc}") from exc

    def write(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

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
