"""What the evaluation, sampling and benchmark jobs share: JSON specs, field checks, checkpoint loading, `main`."""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

SpecT = TypeVar("SpecT", bound="JsonSpec")


class JsonSpec:
    """to_json/from_json for a frozen dataclass; unknown fields are an error, not ignored."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def from_json(cls: type[SpecT], text: str) -> SpecT:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__} JSON must be an object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) in JSON: {', '.join(sorted(unknown))}")
        hints = typing.get_type_hints(cls)
        for key, value in data.items():  # JSON has no tuples; frozen specs hold tuples
            if isinstance(value, list):
                data[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            elif isinstance(value, dict) and dataclasses.is_dataclass(hints.get(key)):
                data[key] = hints[key](**value)  # a nested spec (e.g. EvalSpec.thresholds)
        return cls(**data)

    @classmethod
    def from_file(cls: type[SpecT], path: str | Path) -> SpecT:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def require_path(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: must be a non-empty path string, got {value!r}")


def require_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}: must be a positive number, got {value!r}")


def require_non_negative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: must be an integer >= 0, got {value!r}")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_checkpoint(path: str, *, device: str) -> tuple[Any, Any]:
    """Model (eval mode, on `device`) and tokenizer from a self-describing checkpoint dir."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from exp1_assets.training.integrity import verify_checkpoint

    if not Path(path, "config.json").is_file():
        raise ValueError(f"checkpoint_path: {path} has no config.json (not a save_pretrained model folder)")
    if not any(Path(path).glob("*.safetensors")):
        raise ValueError(f"checkpoint_path: {path} has no safetensors weights "
                         f"(pickled .bin weights are never loaded); {_rematerialize(path)}")
    problem = verify_checkpoint(path)
    if problem:
        raise ValueError(f"damaged checkpoint: {problem}; {_rematerialize(path)}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>"):
        raise ValueError(f"{path}: the tokenizer needs a pad token distinct from <|im_end|>")
    # use_safetensors=True: never fall back to unpickling a pytorch_model.bin found in the folder.
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True).to(device)
    embeddings = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > embeddings:
        raise ValueError(f"{path}: the tokenizer has {len(tokenizer)} tokens but the model's embedding "
                         f"has {embeddings} rows (a tokenizer from another run?); {_rematerialize(path)}")
    model.eval()
    return model, tokenizer


def _rematerialize(path: str) -> str:
    """What to do about a broken checkpoint: name the asset partition that rebuilds it."""
    size = Path(path).name
    spec_file = Path(path, "train_spec.json")
    if spec_file.is_file():
        try:
            size = str(json.loads(spec_file.read_text()).get("size") or size)
        except (json.JSONDecodeError, AttributeError):
            pass
    return f"rematerialize model_checkpoint[{size}]"


def md_metadata(text: str) -> dict[str, str]:
    """A Pipes metadata value Dagster renders as Markdown."""
    return {"type": "md", "raw_value": text}


def run_rank0_job(argv: Sequence[str], *, module: str, spec_class: type[SpecT],
                  work: Callable[..., Any]) -> None:
    """A launched job's `main`: read the spec, then `work(spec, reporter=...)` on global rank 0 only.

    These jobs are single-process work; the launcher may still start extra ranks, which exit at once.
    """
    from exp1_assets.runtime import die_with_parent, global_rank, open_reporter, record_errors

    if len(argv) != 1:
        raise SystemExit(f"usage: python -m {module} spec.json")
    spec = spec_class.from_file(argv[0])
    die_with_parent()  # never outlive the launcher (runtime.die_with_parent)
    with record_errors(spec.run_dir):  # type: ignore[attr-defined]
        if global_rank() != 0:
            return
        with open_reporter() as reporter:
            work(spec, reporter=reporter)
