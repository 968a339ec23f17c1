"""Training entry point: `python -m exp1_assets.training.train spec.json` (under `accelerate launch`).

Reads a `TrainSpec`, trains a freshly initialized model on packed blocks with the HF `Trainer`,
resumes from the latest checkpoint in `spec.run_dir` if there is one, and on rank 0 writes the
self-describing checkpoint to `spec.output_dir` (docs/artifacts.md) and reports it through Pipes.

Every rank records its own traceback in `<run_dir>/errors/rank<N>.txt` (runtime.record_errors).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from exp1_assets.data.blocks import collate_blocks, load_blocks
from exp1_assets.hashing import directory_digest
from exp1_assets.runtime import (
    Reporter, die_with_parent, global_rank, open_reporter, record_errors, world_size,
)
from exp1_assets.sizes import get_size
from exp1_assets.training.spec import TrainSpec

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


# ---- run setup --------------------------------------------------------------------------------

def resolve_precision(requested: str) -> str:
    """auto -> bf16 where supported, fp16 on other CUDA devices, fp32 on CPU."""
    if requested == "fp16" and not torch.cuda.is_available():
        raise ValueError("precision: fp16 needs a CUDA device (use auto, bf16 or fp32 on CPU)")
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def fused_adamw_available() -> bool:
    """Probe fused AdamW on the device we train on (CPU support depends on the torch build)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        param = torch.nn.Parameter(torch.zeros(1, device=device))
        torch.optim.AdamW([param], fused=True)
    except (RuntimeError, ValueError):
        return False
    return True


def latest_checkpoint(run_dir: str | Path, *, reporter: Reporter | None = None) -> Path | None:
    """The highest checkpoint-<step> dir that finished saving and verifies (training/integrity.py).

    A damaged checkpoint (truncated or corrupted weights, a file missing) is skipped in favour of
    the previous good one, with a warning naming the file: resuming from garbage is worse than
    redoing a few hundred steps.
    """
    from exp1_assets.training.integrity import verify_checkpoint

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    complete = [p for p in run_dir.iterdir()
                if CHECKPOINT_RE.match(p.name) and (p / "trainer_state.json").is_file()]
    for candidate in sorted(complete, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)), reverse=True):
        problem = verify_checkpoint(candidate)
        if problem is None:
            return candidate
        if reporter is not None:
            reporter.warning(f"skipping damaged checkpoint {candidate.name}: {problem}")
    return None


def training_arguments(spec: TrainSpec, *, precision: str, layer_classes: list[str], eval_on_start: bool = False):
    from transformers import TrainingArguments

    from exp1_assets.training.sharding import fsdp_arguments

    if spec.report_to == "wandb":
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ValueError("report_to: 'wandb' needs the wandb package installed in the job's env")
        # Secrets stay in the environment (WANDB_API_KEY); the spec only chooses mode/place.
        os.environ.setdefault("WANDB_MODE", spec.wandb_mode)
        os.environ.setdefault("WANDB_PROJECT", spec.wandb_project)
        os.environ.setdefault("WANDB_DIR", spec.wandb_dir or str(Path(spec.run_dir) / "wandb"))
    return TrainingArguments(
        output_dir=spec.run_dir,
        # Without CUDA, say so: otherwise Trainer sees no distributed backend under
        # `accelerate launch --multi_gpu` on CPU, and every rank trains alone on all the data
        # (and all of them write the same checkpoint folder). With it, ranks run DDP over gloo.
        use_cpu=not torch.cuda.is_available(),
        # The initial model's validation loss, measured inside train(): a `trainer.evaluate()`
        # before `train()` leaves the model unwrapped, and the ranks then train without DDP.
        eval_on_start=eval_on_start,
        max_steps=spec.max_steps if spec.max_steps is not None else -1,  # -1: Trainer's "use epochs"
        num_train_epochs=spec.num_epochs,
        per_device_train_batch_size=spec.per_device_batch,
        per_device_eval_batch_size=spec.per_device_batch,
        gradient_accumulation_steps=spec.grad_accum,
        learning_rate=spec.learning_rate,
        lr_scheduler_type="cosine",
        # transformers 5: warmup_steps < 1 is a ratio of the total steps.
        warmup_steps=spec.warmup_steps if spec.warmup_steps is not None else spec.warmup_ratio,
        weight_decay=spec.weight_decay,
        adam_beta1=spec.adam_beta1,
        adam_beta2=spec.adam_beta2,
        max_grad_norm=spec.max_grad_norm,
        optim="adamw_torch_fused" if fused_adamw_available() else "adamw_torch",
        torch_compile=spec.compile,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        # transformers 5 name for gradient checkpointing; non-reentrant is the DDP-safe variant.
        # Under FSDP it is FSDP's own (fsdp_arguments): the Trainer refuses both at once.
        activation_checkpointing=spec.gradient_checkpointing and spec.strategy == "ddp",
        activation_checkpointing_kwargs=({"use_reentrant": False}
                                         if spec.gradient_checkpointing and spec.strategy == "ddp" else None),
        **fsdp_arguments(spec.strategy, layer_classes=layer_classes,
                         gradient_checkpointing=spec.gradient_checkpointing),
        eval_strategy="steps",
        eval_steps=spec.eval_steps,
        prediction_loss_only=True,  # never keep eval logits (vocab x tokens) in memory
        save_strategy="steps",
        save_steps=spec.save_steps,
        save_total_limit=spec.save_total_limit,
        logging_steps=spec.logging_steps,
        logging_first_step=True,
        report_to=[] if spec.report_to == "none" else [spec.report_to],
        seed=spec.seed,
        data_seed=spec.data_seed,
        dataloader_num_workers=spec.dataloader_num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,  # our collator already selects the three block columns
        disable_tqdm=True,  # progress goes through the reporter
    )


# ---- results ----------------------------------------------------------------------------------

def save_final(*, trainer, tokenizer, spec: TrainSpec, weights: dict[str, torch.Tensor], result: dict[str, Any],
               reporter: Reporter) -> None:
    """Rank 0: the self-describing checkpoint + its report (docs/artifacts.md).

    `weights` is the whole model's state dict (gathered from the shards under FSDP).
    """
    from exp1_assets.markdown import png_markdown
    from exp1_assets.training.integrity import write_manifest
    from exp1_assets.training.loss_curve import plot_loss_curve

    output_dir = Path(spec.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.config.use_cache = True  # off during training only (packed-mask reason above)
    model.generation_config.eos_token_id = tokenizer.eos_token_id  # <|im_end|>: stop there
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(output_dir, state_dict=weights)  # safetensors + config.json + generation_config.json
    tokenizer.save_pretrained(output_dir)  # includes the chat template
    spec.as_published().write(output_dir / "train_spec.json")  # final paths, not the staging dir
    (output_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    (output_dir / "train_result.json").write_text(json.dumps(result, indent=2))
    curve = plot_loss_curve(trainer.state.log_history, path=output_dir / "loss_curve.png",
                            title=f"{spec.size} ({spec.architecture})")
    metadata: dict[str, Any] = {k: v for k, v in result.items() if v is not None}
    metadata["loss_curve"] = {"type": "md", "raw_value": png_markdown(curve, alt="loss curve")}
    write_manifest(output_dir)  # last: evaluation verifies the weights against it before loading
    # The checkpoint's data version hashes its weights only, as it always has (persisted in Dagster).
    reporter.report_materialization(metadata=metadata,
                                    data_version=directory_digest(output_dir, pattern="*.safetensors"))


def train(spec: TrainSpec, *, reporter: Reporter) -> dict[str, Any] | None:
    from transformers import AutoTokenizer, PrinterCallback

    from exp1_assets.training.callbacks import (
        InitialLossCallback, ManifestCallback, PlannedStepGuard, ProgressCallback, TrainingAlreadyDone,
    )
    from exp1_assets.training.faults import FaultInjectionCallback
    from exp1_assets.training.model import build_model
    from exp1_assets.training.preemption import PreemptionCallback
    from exp1_assets.training.sharding import full_state_dict, sharded_trainer_class

    started = time.perf_counter()
    preemption = PreemptionCallback(run_dir=spec.run_dir, reporter=reporter)  # first: catches a signal while loading
    tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer_path)
    if tokenizer.eos_token_id is None or tokenizer.eos_token_id == tokenizer.pad_token_id:
        raise ValueError(f"{spec.tokenizer_path}: eos ({tokenizer.eos_token!r}) must exist and differ "
                         f"from pad ({tokenizer.pad_token!r}), or the model never learns to stop")
    train_blocks = load_blocks(spec.train_path, max_length=spec.max_length, vocab_size=len(tokenizer))
    validation_blocks = load_blocks(spec.validation_path, max_length=spec.max_length,
                                    vocab_size=len(tokenizer))
    model = build_model(get_size(spec.size), architecture=spec.architecture, vocab_size=len(tokenizer),
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, dropout=spec.dropout, seed=spec.seed,
                        attn_implementation=spec.attn_implementation)
    # With a KV cache, transformers ignores the position_ids-based block-diagonal mask and packed
    # conversations attend to each other (logits off by up to ~7 on a tiny GPT-2). Training never
    # needs the cache; it is switched back on for the saved model, where generation wants it.
    model.config.use_cache = False
    param_count = sum(p.numel() for p in model.parameters())
    precision = resolve_precision(spec.precision)
    progress = ProgressCallback(reporter)
    # Val loss of the initial model (same seed -> same init on a relaunch), cached across resumes.
    resume_from = latest_checkpoint(spec.run_dir, reporter=reporter)
    before_file = Path(spec.run_dir) / "val_loss_before.json"
    cached_before = resume_from is not None and before_file.is_file()
    trainer = sharded_trainer_class()(
        model=model, args=training_arguments(spec, precision=precision, layer_classes=list(model._no_split_modules),
                                             eval_on_start=not cached_before),
        train_dataset=train_blocks, eval_dataset=validation_blocks, data_collator=collate_blocks,
        processing_class=tokenizer,  # lets Trainer count non-pad tokens seen
        callbacks=[progress, ManifestCallback(), InitialLossCallback(before_file), PlannedStepGuard(), preemption]
        + ([FaultInjectionCallback(spec.debug)] if spec.debug.injects_faults else []),
    )
    trainer.remove_callback(PrinterCallback)  # raw log dicts on stdout; ProgressCallback reports
    reporter.log(f"training {spec.size}/{spec.architecture}: {param_count:,} params, {len(train_blocks)} "
                 f"blocks, world size {world_size()}, {spec.strategy}, precision {precision}, spec {spec.spec_hash()}"
                 + (f", resuming from {resume_from.name}" if resume_from else ""))

    train_started = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except TrainingAlreadyDone as done:  # killed between the last checkpoint and the final save
        reporter.log(f"nothing left to train ({done}): writing the model")
        output = None
    if preemption.stopped_at_step is not None:  # no final model: the next attempt resumes from its checkpoint
        preemption.leave()
        return None
    train_seconds = time.perf_counter() - train_started
    if before_file.is_file():  # written by rank 0 at the step-0 evaluation (InitialLossCallback)
        val_loss_before = json.loads(before_file.read_text())["eval_loss"]
    else:
        val_loss_before = next(e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e)
    last_eval = [e for e in trainer.state.log_history if "eval_loss" in e]
    if last_eval and last_eval[-1]["step"] == trainer.state.global_step:
        val_loss_after = last_eval[-1]["eval_loss"]
    else:
        val_loss_after = trainer.evaluate()["eval_loss"]

    if spec.debug.rank_params:
        write_rank_params(trainer.accelerator.unwrap_model(trainer.model), Path(spec.run_dir) / "debug")
    # A collective under FSDP (every rank sends its shards), so before the other ranks leave.
    weights = full_state_dict(trainer.accelerator.unwrap_model(trainer.model))
    if not trainer.is_world_process_zero():
        return None

    resumed_step = int(resume_from.name.split("-")[1]) if resume_from else None
    tokens_seen = int(trainer.state.num_input_tokens_seen)  # restored on resume: whole run
    session_tokens = tokens_seen - progress.start_tokens
    train_losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    result = {
        "size": spec.size, "architecture": spec.architecture, "spec_hash": spec.spec_hash(),
        "final_train_loss": float(train_losses[-1]) if train_losses or output is None else float(output.training_loss),
        "mean_train_loss": float(output.training_loss) if output else float(sum(train_losses) / len(train_losses)),
        "val_loss_before": float(val_loss_before), "val_loss_after": float(val_loss_after),
        "steps": int(trainer.state.global_step), "epochs": float(trainer.state.epoch or 0.0),
        "tokens_seen": tokens_seen,
        "wall_time_s": float(time.perf_counter() - started), "train_time_s": float(train_seconds),
        "tokens_per_s": float(session_tokens / max(train_seconds, 1e-9)),
        "param_count": int(param_count), "resumed_from_step": resumed_step,
        "world_size": int(trainer.args.world_size), "precision": precision,  # ranks really in DDP/FSDP
        "strategy": spec.strategy,
        "device": str(trainer.args.device),
        "torch_threads": int(torch.get_num_threads()),  # intra-op threads per rank (accelerate sets them)
    }
    save_final(trainer=trainer, tokenizer=tokenizer, spec=spec, weights=weights, result=result, reporter=reporter)
    reporter.log(f"saved {spec.output_dir}: val loss {val_loss_before:.3f} -> {val_loss_after:.3f}")
    return result


def write_rank_params(model: torch.nn.Module, debug_dir: Path) -> None:
    """This rank's parameters (its local shards under FSDP), for tests to compare.

    Under DDP the ranks' copies agree up to gloo's rounding (not bitwise: its all-reduce may round
    differently per rank on CPU, ~3e-8 relative after 3 steps); under FSDP2 the shards are dim-0
    chunks that together make the consolidated weights.
    """
    from safetensors.torch import save_file

    debug_dir.mkdir(parents=True, exist_ok=True)
    local = {n: getattr(p, "to_local", lambda p=p: p)().detach().contiguous() for n, p in model.named_parameters()}
    save_file(local, str(debug_dir / f"rank{global_rank()}_params.safetensors"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m exp1_assets.training.train SPEC.json", file=sys.stderr)
        return 2
    die_with_parent()  # ranks must not outlive their agent (runtime.die_with_parent)
    spec = TrainSpec.read(argv[0])
    with record_errors(spec.run_dir), open_reporter() as reporter:
        train(spec, reporter=reporter)
    from exp1_assets.training.preemption import exit_code

    return exit_code()  # PREEMPTED_EXIT_CODE after a stop at the warning signal (launch/errors.py)


if __name__ == "__main__":
    sys.exit(main())
