"""The pieces of `bench/gpu_acceptance.py`: synthetic data, the measured training job, the logit and
generation checks.

Also the training job's entry point: `accelerate launch bench/gpu_acceptance_checks.py --job SPEC.json`
runs the library's job (`exp1_assets.training.train.main`) unchanged, with its progress callback
extended to time the steady-state steps and read the device's peak memory at the last step. The
job's own `tokens_per_s` covers the whole `trainer.train()`: the initial and final evaluation and
the final checkpoint save are in it, so it understates the training speed of a short run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
FIRST_WORD = 5  # ids 0-4: the four ChatML special tokens and <unk>
PAD_ID, BOS_ID, EOS_ID = 3, 0, 2  # as `synthetic_tokenizer` numbers them
# Packed vs unpacked logits: fp32 agrees to ~3e-6 and bf16 to ~0.03 on a random-init 125M llama,
# while documents that see each other differ by ~4 (measured on CPU, 512-token rows).
TOLERANCE = {"float32": 1e-3, "bfloat16": 0.15}


class JobFailed(RuntimeError):
    """A training job that exited non-zero or ran past its time; the message names the cause."""


@dataclass(frozen=True)
class Data:
    """Synthetic packed blocks in the library's format, and a tokenizer of exactly `vocab_size`."""

    tokenizer: Path
    train: Path
    validation: Path
    max_length: int
    vocab_size: int


def synthetic_tokenizer(directory: Path, *, vocab_size: int) -> None:
    """A word-level tokenizer of exactly `vocab_size` entries with the ChatML special tokens.

    The training job needs only its size and special ids; no corpus (and no Hub) gives a trained
    BPE of GPT-2's 50257 entries offline, and the model's shape, not the words, sets the speed.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from exp1_assets.data.chat import BOS, CHATML_TEMPLATE, IM_END, IM_START, PAD

    specials = [BOS, IM_START, IM_END, PAD, "<unk>"]
    vocab = {token: i for i, token in enumerate(specials)}
    vocab.update({f"w{i}": i for i in range(FIRST_WORD, vocab_size)})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=IM_END, pad_token=PAD,
                                        unk_token="<unk>", additional_special_tokens=[IM_START])
    tokenizer.chat_template = CHATML_TEMPLATE
    if (len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id) != (vocab_size, PAD_ID, EOS_ID):
        raise RuntimeError(f"synthetic tokenizer: size {len(tokenizer)}, pad {tokenizer.pad_token_id}, "
                           f"eos {tokenizer.eos_token_id}; expected {vocab_size}, {PAD_ID}, {EOS_ID}")
    tokenizer.save_pretrained(directory)


def synthetic_blocks(*, blocks: int, max_length: int, vocab_size: int, seed: int) -> dict[str, np.ndarray]:
    """Packed rows as the packer writes them: documents back to back, positions restarting at 0.

    Tokens follow a Zipf law, so the loss has something to learn in a few steps (a run whose loss
    does not fall is broken); documents are log-normal around a fifth of the row, so most rows hold
    three or more (what the logit check needs); the first 40% of each document is an untrained prompt.
    """
    from exp1_assets.data.blocks import BLOCK_DTYPE, IGNORE_INDEX

    rng = np.random.default_rng(seed)
    weights = np.arange(1, vocab_size - FIRST_WORD + 1, dtype=np.float64) ** -1.1
    ids = rng.choice(len(weights), size=(blocks, max_length), p=weights / weights.sum()) + FIRST_WORD
    positions = np.zeros((blocks, max_length), dtype=BLOCK_DTYPE)
    labels = ids.copy()
    for row in range(blocks):
        start = 0
        while start < max_length:
            length = int(min(max_length - start, max(2, rng.lognormal(np.log(max_length / 5), 0.6))))
            positions[row, start:start + length] = np.arange(length)
            labels[row, start:start + max(1, int(0.4 * length))] = IGNORE_INDEX
            start += length
    return {"input_ids": ids.astype(BLOCK_DTYPE), "labels": labels.astype(BLOCK_DTYPE), "position_ids": positions}


def make_data(root: Path, *, vocab_size: int, max_length: int, train_blocks: int, validation_blocks: int) -> Data:
    import pyarrow as pa

    from exp1_assets.data.blocks import arrow_schema, blocks_problem, record_batch

    data = Data(tokenizer=root / "tokenizer", train=root / "train.arrow", validation=root / "validation.arrow",
                max_length=max_length, vocab_size=vocab_size)
    synthetic_tokenizer(data.tokenizer, vocab_size=vocab_size)
    for path, count, seed in ((data.train, train_blocks, 0), (data.validation, validation_blocks, 1)):
        arrays = synthetic_blocks(blocks=count, max_length=max_length, vocab_size=vocab_size, seed=seed)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, arrow_schema()) as writer:
            writer.write_batch(record_batch(arrays))
        problem = blocks_problem(path, max_length=max_length, vocab_size=vocab_size)  # the training job's validator
        if problem is not None:
            raise RuntimeError(f"synthetic blocks break the block contract: {problem}")
    return data


# ---- the training job, measured ------------------------------------------------------------------

def warmup_steps(max_steps: int) -> int:
    """Steps left out of the timing (CUDA/cuBLAS warm-up, allocator growth, first data loads)."""
    return max(1, min(20, max_steps // 5))


def run_training(*, name: str, work: Path, data: Data, size: str, processes: int, timeout_s: float,
                 overrides: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """`accelerate launch` the library's training job on `processes` ranks; its results and measurements.

    `threads`: CPU threads per rank (default: the machine's cores shared out, as the launcher does).
    """
    from exp1_assets.launch.accelerate import accelerate_args, cpu_threads_per_process, free_port
    from exp1_assets.launch.local import LocalJob
    from exp1_assets.training.spec import TrainSpec

    run_dir, output_dir = work / "runs" / name, work / "models" / name
    spec = TrainSpec.from_size(
        size, train_path=str(data.train), validation_path=str(data.validation), tokenizer_path=str(data.tokenizer),
        output_dir=str(output_dir), run_dir=str(run_dir), max_length=data.max_length,
        # Evaluate and save only where the Trainer always does (start and end): the timed steps are training.
        eval_steps=10**6, save_steps=10**6, save_total_limit=1, **overrides)
    if spec.max_steps is None or spec.max_steps < 2:
        raise ValueError(f"{name}: max_steps must be >= 2 (one warm-up step, one timed), got {spec.max_steps}")
    spec_path = spec.write(run_dir / "spec.json")
    launch = accelerate_args(num_processes=processes, num_machines=1, machine_rank="0", main_process_ip="127.0.0.1",
                             main_process_port=str(free_port()),
                             cpu_threads_per_process=threads or cpu_threads_per_process(processes))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, str(Path(__file__).resolve()),
           "--job", str(spec_path), "--warmup-steps", str(warmup_steps(spec.max_steps))]
    job = LocalJob.start(cmd=cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, log_path=run_dir / "job.log")
    deadline = time.monotonic() + timeout_s
    try:
        while (code := job.poll()) is None:
            if time.monotonic() > deadline:
                raise JobFailed(f"{name}: no result within {timeout_s:.0f} s, stopped (log: {run_dir / 'job.log'})")
            time.sleep(0.5)
    except BaseException:  # the deadline, or this process being stopped: no rank may outlive it
        job.cancel(grace_s=10.0)
        raise
    if code != 0:
        errors = sorted((run_dir / "errors").glob("rank*.txt"))
        detail = errors[0].read_text().splitlines()[0] if errors else job.log_tail()[-1500:]
        raise JobFailed(f"{name}: exit code {code}: {detail}")
    return summarize(spec, result=json.loads((output_dir / "train_result.json").read_text()),
                     ranks=[json.loads(p.read_text()) for p in sorted((run_dir / "acceptance").glob("rank*.json"))],
                     history=json.loads((output_dir / "log_history.json").read_text()))


def summarize(spec: Any, *, result: dict[str, Any], ranks: list[dict[str, Any]],
              history: list[dict[str, Any]]) -> dict[str, Any]:
    if len(ranks) != result["world_size"]:
        raise JobFailed(f"{len(ranks)} of {result['world_size']} ranks wrote their measurements")
    timed = ranks[0]
    steps = timed["end_step"] - timed["start_step"]
    seconds = timed["end_time"] - timed["start_time"]
    # Every token of a block is computed (filler included): the FLOPs follow the blocks, not the text.
    tokens = steps * spec.per_device_batch * spec.grad_accum * spec.max_length * result["world_size"]
    gib = 2.0**30
    return {
        "strategy": spec.strategy, "attn_implementation": spec.attn_implementation, "precision": result["precision"],
        "world_size": result["world_size"], "micro_batch": spec.per_device_batch, "grad_accum": spec.grad_accum,
        "gradient_checkpointing": spec.gradient_checkpointing, "seq_len": spec.max_length,
        "steps": result["steps"], "param_count": result["param_count"],
        "timed_steps": steps, "timed_s": seconds, "timed_tokens": tokens, "tokens_per_s": tokens / seconds,
        "s_per_step": seconds / steps, "job_tokens_per_s": result["tokens_per_s"],
        "job_train_time_s": result["train_time_s"], "job_wall_time_s": result["wall_time_s"],
        "val_loss_before": result["val_loss_before"], "val_loss_after": result["val_loss_after"],
        "losses": [[e["step"], e["loss"]] for e in history if "loss" in e],
        "peak_allocated_gib": max((r.get("peak_allocated_bytes", 0) for r in ranks), default=0) / gib or None,
        "peak_reserved_gib": max((r.get("peak_reserved_bytes", 0) for r in ranks), default=0) / gib or None,
        "peak_rss_gib": max(r["peak_rss_bytes"] for r in ranks) / gib,
    }


def _timed_progress(base: type, *, warmup: int, out: Path) -> type:
    """`base` (the library's ProgressCallback) plus a synchronized clock at step `warmup` and at the
    last step, and the device's peak memory at the last step (before the final evaluation and save)."""
    import resource

    import torch

    def now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # kernels still queued belong to the steps before the mark
        return time.perf_counter()

    class TimedProgress(base):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == warmup:
                self.window = {"start_step": state.global_step, "start_time": now()}
            if state.global_step == state.max_steps and hasattr(self, "window"):
                record = {**self.window, "end_step": state.global_step, "end_time": now(),
                          "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
                if torch.cuda.is_available():
                    record.update(peak_allocated_bytes=torch.cuda.max_memory_allocated(),
                                  peak_reserved_bytes=torch.cuda.max_memory_reserved())
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(record))
            return super().on_step_end(args, state, control, **kwargs)

    return TimedProgress


def job_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="the library's training job, timed (run by gpu_acceptance.py)")
    parser.add_argument("--job", required=True, help="a TrainSpec JSON")
    parser.add_argument("--warmup-steps", type=int, required=True)
    args = parser.parse_args(argv)
    from exp1_assets.runtime import global_rank
    from exp1_assets.training import callbacks, train
    from exp1_assets.training.spec import TrainSpec

    run_dir = Path(TrainSpec.read(args.job).run_dir)
    # train() imports ProgressCallback from this module when it runs, so it picks up the timed one.
    callbacks.ProgressCallback = _timed_progress(callbacks.ProgressCallback, warmup=args.warmup_steps,
                                                 out=run_dir / "acceptance" / f"rank{global_rank()}.json")
    return train.main([args.job])


# ---- packed vs unpacked logits -------------------------------------------------------------------

def packed_logit_check(*, size: str, data: Data, implementation: str, device: str, rows: int) -> dict[str, Any]:
    """The model as training builds it, on packed validation rows: packed logits == each document alone.

    fp32 (TF32 off) except flash_attention_2, whose kernels take 16-bit only. The control runs the
    same rows with a KV cache, where transformers ignores the restarting positions (DESIGN.md): it
    shows how far apart documents that see each other land, against the tolerance.
    """
    import torch

    from exp1_assets.data.blocks import load_block_arrays
    from exp1_assets.sizes import get_size
    from exp1_assets.training.model import build_model

    dtype = torch.bfloat16 if implementation == "flash_attention_2" else torch.float32
    blocks = load_block_arrays(data.validation)
    picked = [r for r in range(len(blocks["position_ids"])) if (blocks["position_ids"][r] == 0).sum() >= 3][:rows]
    if not picked:
        raise ValueError(f"{data.validation}: no row holds 3 documents")
    model = build_model(get_size(size), architecture="llama", vocab_size=data.vocab_size, pad_token_id=PAD_ID,
                        bos_token_id=BOS_ID, eos_token_id=EOS_ID, seed=0, attn_implementation=implementation)
    model = model.to(device=device, dtype=dtype).eval()
    diffs, leaks, documents = [], [], 0
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            for row in picked:
                ids = torch.tensor(blocks["input_ids"][row:row + 1], dtype=torch.long, device=device)
                positions = torch.tensor(blocks["position_ids"][row:row + 1], dtype=torch.long, device=device)
                starts = (positions[0] == 0).nonzero().flatten().tolist() + [data.max_length]
                packed = model(input_ids=ids, position_ids=positions, attention_mask=None, use_cache=False).logits[0]
                alone = torch.cat([model(input_ids=ids[:, a:b], use_cache=False).logits[0]
                                   for a, b in zip(starts, starts[1:])])
                diffs.append((packed.float() - alone.float()).abs().max().item())
                try:
                    leaky = model(input_ids=ids, position_ids=positions, attention_mask=None, use_cache=True).logits[0]
                    leaks.append((leaky.float() - alone.float()).abs().max().item())
                except (RuntimeError, ValueError, TypeError):  # the control is a figure, never the verdict
                    leaks.append(None)
                documents += len(starts) - 1
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    tolerance = TOLERANCE[str(dtype).removeprefix("torch.")]
    return {"dtype": str(dtype).removeprefix("torch."), "rows": len(picked), "documents": documents,
            "max_abs_diff": max(diffs), "tolerance": tolerance, "cache_control_max_abs_diff": max((x for x in leaks if x is not None), default=None),
            "passed": max(diffs) <= tolerance}


# ---- batched generation vs HF generate ---------------------------------------------------------

def generation_check(*, device: str, builtin_size: int, prompts: int, max_new_tokens: int, batch_size: int,
                     train_steps: int) -> dict[str, Any]:
    """`generate_batched` (continuous batching) vs `generate_one_at_a_time` (HF `generate` per prompt),
    greedy, on a `tiny` llama trained a few steps on the built-in corpus (bench/generation.py's setup).

    fp32 with TF32 off. Different batch shapes sum in different orders, so on a GPU a near-tie can
    flip one greedy token; if any reply differs, both sides run again in float64, where a real bug
    (a mask, a position, a cache row) still shows and rounding does not.
    """
    import torch
    from transformers import AutoTokenizer

    sys.path.insert(0, str(BENCH))
    import _common
    import generation as bench_generation

    from exp1_assets.evaluation.generation import generate_batched, generate_one_at_a_time
    from exp1_assets.sizes import get_size
    from exp1_assets.training.model import build_model

    paths = _common.builtin_pipeline(builtin_size=builtin_size, max_length=256)
    tokenizer = AutoTokenizer.from_pretrained(str(paths["tokenizer"]))
    conversations = bench_generation.workload_prompts("eval", paths["splits"], count=prompts)
    model = build_model(get_size("tiny"), architecture="llama", vocab_size=len(tokenizer),
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, seed=0)
    # quick_train feeds CPU tensors: train the tiny model there (seconds), then move it.
    losses = bench_generation.quick_train(model, paths["packed"], steps=train_steps, batch=8)
    model = model.to(device).eval()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sides = {"batched": lambda: generate_batched(model, tokenizer, conversations, max_new_tokens=max_new_tokens,
                                                 batch_size=batch_size),
             "hf_generate": lambda: generate_one_at_a_time(model, tokenizer, conversations,
                                                           max_new_tokens=max_new_tokens)}
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        generate_batched(model, tokenizer, conversations[:2], max_new_tokens=2, batch_size=2)  # warm-up
        generate_one_at_a_time(model, tokenizer, conversations[:1], max_new_tokens=2)
        outputs, seconds = {}, {}
        for side, run in sides.items():
            sync()
            start = time.perf_counter()
            outputs[side] = run()
            sync()
            seconds[side] = time.perf_counter() - start
        identical = sum(a == b for a, b in zip(outputs["batched"], outputs["hf_generate"]))
        identical_fp64 = None
        if identical < len(conversations):
            model = model.double()
            again = {side: run() for side, run in sides.items()}
            identical_fp64 = sum(a == b for a, b in zip(again["batched"], again["hf_generate"]))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
    mismatches = [{"prompt": i, "batched": a.text[:160], "hf_generate": b.text[:160]}
                  for i, (a, b) in enumerate(zip(outputs["batched"], outputs["hf_generate"])) if a != b]
    return {
        "prompts": len(conversations), "max_new_tokens": max_new_tokens, "batch_size": batch_size,
        "train_losses": [round(x, 4) for x in losses[-3:]],
        "sides": {side: {"seconds": seconds[side], "prompts_per_s": len(conversations) / seconds[side],
                         "new_tokens": sum(g.n_tokens for g in outputs[side]),
                         "stopped": sum(g.stopped for g in outputs[side])} for side in sides},
        "speedup": seconds["hf_generate"] / seconds["batched"],
        "identical": identical, "identical_fp64": identical_fp64, "mismatches": mismatches[:3],
        "passed": identical == len(conversations) or identical_fp64 == len(conversations),
    }


if __name__ == "__main__":
    sys.exit(job_main(sys.argv[1:]))
