"""Training throughput: the research seed's padded GPT-2 recipe vs the project's packed default path.

Same data (built-in corpus -> split -> trained BPE -> the library's packer, max_length 2048), same
tokenizer, same `tiny` model shape (max_positions raised to max_length), same number of optimizer
steps and the same number of input tokens per step (rows x row length, padding included). Both
sides use one plain training loop (forward, backward, clip 1.0, AdamW step), alternating step by
step in one process, so machine load hits both alike.

  seed-style: rows padded to the longest row of each 1000-row chunk, truncated at max_length,
              labels on every non-pad token, GPT-2 with dropout 0.1, fp32, attention_mask passed,
              torch's default AdamW.
  default:    the library's packed blocks (best-fit decreasing), position_ids restarting per
              conversation, attention_mask=None, use_cache=False, llama, dropout 0, fused AdamW
              (foreach when fused is unavailable), bf16 autocast on CUDA.

Reports per side: real (non-pad) tokens/s, loss-carrying tokens/s, s/step, time per epoch of the
same data (epoch real tokens / real tokens per second), achieved FLOP/s and its fraction of the
measured matmul peak ("MFU"). Run `--help` for options; `--device cuda --size 125M` on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

SEED_CHUNK_ROWS = 1000  # the seed script padded each 1000-row map() chunk to its longest row


# ---- data ------------------------------------------------------------------------------------

def seed_style_batches(*, splits_dir: Path, tokenizer, max_length: int, tokens_per_step: int) -> tuple[list, int]:
    """Padded batches as the seed built them; returns (batches, real tokens in one epoch).

    Each batch holds rows of one chunk (so one padded length); rows per batch = tokens_per_step //
    padded length, so every step feeds the same number of input tokens as a packed step.
    """
    import pyarrow.parquet as pq

    from exp1_assets.data.packing import tokenize_conversations

    messages = pq.read_table(splits_dir / "train.parquet", columns=["messages"]).column("messages").to_pylist()
    documents = tokenize_conversations(tokenizer, messages, train_on="all")  # same ChatML rendering
    pad = tokenizer.pad_token_id
    batches, epoch_real = [], 0
    for start in range(0, len(documents), SEED_CHUNK_ROWS):
        rows = [ids[:max_length] for ids, _ in documents[start:start + SEED_CHUNK_ROWS]]
        width = max(len(r) for r in rows)
        input_ids = np.full((len(rows), width), pad, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            input_ids[i, :len(r)], mask[i, :len(r)] = r, 1
        epoch_real += int(mask.sum())
        per_batch = max(1, tokens_per_step // width)
        for b in range(0, len(rows), per_batch):
            ids, m = input_ids[b:b + per_batch], mask[b:b + per_batch]
            if len(ids) == per_batch:  # equal tokens per step: drop the ragged last batch of a chunk
                batches.append({"input_ids": ids, "attention_mask": m, "labels": np.where(m == 1, ids, -100)})
    return batches, epoch_real


def packed_batches(*, packed_dir: Path, max_length: int, tokens_per_step: int, pad_token_id: int) -> tuple[list, int]:
    """The library's blocks, `tokens_per_step // max_length` blocks per step; (batches, epoch real tokens)."""
    from exp1_assets.data.blocks import load_block_arrays

    column = {c: array.astype(np.int64) for c, array in load_block_arrays(packed_dir / "train.arrow").items()}
    if column["input_ids"].shape[1] != max_length:
        raise ValueError(f"{packed_dir}: blocks are {column['input_ids'].shape[1]} tokens, expected {max_length}")
    epoch_real = int((column["input_ids"] != pad_token_id).sum())
    per_batch = max(1, tokens_per_step // max_length)
    batches = [{c: column[c][b:b + per_batch] for c in column}
               for b in range(0, len(column["input_ids"]) - per_batch + 1, per_batch)]
    return batches, epoch_real


# ---- model + step ----------------------------------------------------------------------------

def make_side(*, name: str, size, architecture: str, dropout: float, tokenizer, device: str, fused: bool):
    import torch

    from exp1_assets.training.model import build_model

    model = build_model(size, architecture=architecture, vocab_size=len(tokenizer), dropout=dropout,
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, seed=0).to(device)
    model.config.use_cache = False
    model.train()
    if fused:
        try:
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), fused=True)
            optimizer_kind = "fused"
        except (RuntimeError, ValueError):
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), foreach=True)
            optimizer_kind = "foreach"
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
        optimizer_kind = "default"
    # Matmul parameters: embedding lookups are free, but the tied input embedding is also the LM head.
    position_table = sum(p.numel() for n, p in model.named_parameters() if "wpe" in n)
    matmul_params = sum(p.numel() for p in model.parameters()) - position_table
    return {"name": name, "model": model, "optimizer": optimizer, "optimizer_kind": optimizer_kind,
            "matmul_params": matmul_params, "architecture": architecture, "dropout": dropout}


def train_step(side: dict, batch: dict, *, device: str, autocast_dtype) -> float:
    import torch

    tensors = {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items()}
    context = (torch.autocast(device_type="cuda", dtype=autocast_dtype) if autocast_dtype is not None
               else torch.autocast(device_type="cpu", enabled=False))
    with context:
        loss = side["model"](**tensors).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(side["model"].parameters(), 1.0)
    side["optimizer"].step()
    side["optimizer"].zero_grad(set_to_none=True)
    return float(loss.detach())


def step_flops(side: dict, batch: dict, size) -> float:
    """6 N T for the matmuls + 12 L h s T for attention scores/values (fwd + bwd, full s x s)."""
    rows, seq = batch["input_ids"].shape
    tokens = rows * seq
    return 6 * side["matmul_params"] * tokens + 12 * size.layers * size.hidden * seq * tokens


def measure(args) -> dict:
    import torch
    from transformers import AutoTokenizer

    from exp1_assets.sizes import get_size

    device = args.device
    torch.manual_seed(0)
    paths = _common.builtin_pipeline(builtin_size=args.builtin_size, max_length=args.max_length)
    tokenizer = AutoTokenizer.from_pretrained(str(paths["tokenizer"]))
    base = get_size(args.size)
    size = dataclasses.replace(base, max_positions=max(base.max_positions, args.max_length),
                               max_length=args.max_length)
    tokens_per_step = args.tokens_per_step or size.per_device_batch * args.max_length

    seed_data, seed_epoch_real = seed_style_batches(splits_dir=paths["splits"], tokenizer=tokenizer,
                                                    max_length=args.max_length, tokens_per_step=tokens_per_step)
    packed_data, packed_epoch_real = packed_batches(packed_dir=paths["packed"], max_length=args.max_length,
                                                    tokens_per_step=tokens_per_step,
                                                    pad_token_id=tokenizer.pad_token_id)
    cuda = device.startswith("cuda")
    sides = {
        "seed-style": make_side(name="seed-style", size=size, architecture="gpt2", dropout=0.1,
                                tokenizer=tokenizer, device=device, fused=False),
        "default": make_side(name="default", size=size, architecture="llama", dropout=0.0,
                             tokenizer=tokenizer, device=device, fused=True),
    }
    if cuda and size.gradient_checkpointing and not args.no_checkpointing:
        for side in sides.values():
            side["model"].gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    data = {"seed-style": seed_data, "default": packed_data}
    autocast = {"seed-style": None, "default": torch.bfloat16 if cuda else None}
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    # Peak measured before and after the steps (best of both): a shared machine's load varies.
    peak_seconds = 0.5 if args.quick else 3.0
    peak_before = _common.peak_matmul_flops(device=device, dtype=torch.float32, seconds=peak_seconds)
    # The same random steps of each side's epoch, drawn across the whole epoch (seeded).
    rng = random.Random(0)
    picks = {name: [rng.randrange(len(batches)) for _ in range(args.warmup + args.steps)]
             for name, batches in data.items()}
    records = {name: [] for name in sides}
    for step in range(args.warmup + args.steps):
        order = list(sides) if step % 2 == 0 else list(reversed(sides))  # alternate who goes first
        for name in order:
            batch = data[name][picks[name][step]]
            sync()
            start = time.perf_counter()
            loss = train_step(sides[name], batch, device=device, autocast_dtype=autocast[name])
            sync()
            seconds = time.perf_counter() - start
            if step >= args.warmup:
                real = int((batch["input_ids"] != tokenizer.pad_token_id).sum())
                loss_tokens = int((batch["labels"][:, 1:] != -100).sum())  # after the causal shift
                records[name].append({"seconds": seconds, "real": real, "loss_tokens": loss_tokens,
                                      "tokens": int(batch["input_ids"].size), "loss": loss,
                                      "flops": step_flops(sides[name], batch, size),
                                      "seq": int(batch["input_ids"].shape[1])})
            print(f"  step {step:2d} {name:10s} {seconds:7.3f}s loss {loss:.3f}", flush=True)

    peak = max(peak_before, _common.peak_matmul_flops(device=device, dtype=torch.float32, seconds=peak_seconds))
    peak_bf16 = _common.peak_matmul_flops(device=device, dtype=torch.bfloat16, seconds=peak_seconds) if cuda else None
    epoch_real = {"seed-style": seed_epoch_real, "default": packed_epoch_real}
    summary = {}
    for name, recs in records.items():
        side_peak = peak_bf16 if (cuda and name == "default") else peak
        real_rate = _common.median([r["real"] / r["seconds"] for r in recs])
        flops_rate = _common.median([r["flops"] / r["seconds"] for r in recs])
        summary[name] = {
            "architecture": sides[name]["architecture"], "dropout": sides[name]["dropout"],
            "optimizer": sides[name]["optimizer_kind"], "precision": "bf16-autocast" if autocast[name] else "fp32",
            "steps": len(recs), "s_per_step": _common.median([r["seconds"] for r in recs]),
            "input_tokens_per_step": _common.median([r["tokens"] for r in recs]),
            "row_length_median": _common.median([r["seq"] for r in recs]),
            "real_tokens_per_s": real_rate,
            "loss_tokens_per_s": _common.median([r["loss_tokens"] / r["seconds"] for r in recs]),
            "real_fraction": sum(r["real"] for r in recs) / sum(r["tokens"] for r in recs),
            "epoch_real_tokens": epoch_real[name],
            "epoch_s": epoch_real[name] / real_rate,
            "achieved_flops": flops_rate, "peak_flops": side_peak, "mfu": flops_rate / side_peak,
            "matmul_params": sides[name]["matmul_params"], "final_loss": recs[-1]["loss"],
        }
    seed, default = summary["seed-style"], summary["default"]
    ratios = {key: default[key] / seed[key] for key in ("real_tokens_per_s", "loss_tokens_per_s")}
    ratios["epoch_time_speedup"] = seed["epoch_s"] / default["epoch_s"]
    return {"settings": {**vars(args), "tokens_per_step": tokens_per_step, "shape": dataclasses.asdict(size)},
            "peak_fp32_flops": peak, "peak_bf16_flops": peak_bf16, "sides": summary, "ratios": ratios,
            "target": {"real_tokens_per_s_ratio": 6.0, "gpu_mfu": 0.40},
            "meets_target": ratios["real_tokens_per_s"] >= 6.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda: default side in bf16 autocast)")
    parser.add_argument("--size", default="tiny", help="model shape from exp1_assets.sizes (125M/500M on GPU)")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--builtin-size", type=int, default=20_000, help="built-in corpus conversations")
    parser.add_argument("--tokens-per-step", type=int, default=0,
                        help="input tokens per optimizer step (0: the size's per_device_batch x max_length)")
    parser.add_argument("--steps", type=int, default=6, help="measured steps per side")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps per side first")
    parser.add_argument("--no-checkpointing", action="store_true", help="GPU: ignore the size's gradient checkpointing")
    parser.add_argument("--quick", action="store_true", help="smoke settings: 600 rows, max_length 128, 1 step")
    args = parser.parse_args(argv)
    if args.quick:
        args.builtin_size, args.max_length, args.steps, args.warmup = 600, 128, 1, 1
        args.tokens_per_step = args.tokens_per_step or 256
    if args.device.startswith("cuda") and args.size == "tiny":
        print("note: --device cuda with the tiny shape measures launch overhead; try --size 125M", file=sys.stderr)

    result = measure(args)
    rows = [{"side": name, **s} for name, s in result["sides"].items()]
    print()
    _common.print_table(rows, ["side", "architecture", "optimizer", "precision", "s_per_step", "row_length_median",
                               "real_fraction", "real_tokens_per_s", "loss_tokens_per_s", "epoch_s", "mfu"])
    r = result["ratios"]
    print(f"\npeak matmul fp32: {result['peak_fp32_flops'] / 1e9:.1f} GFLOP/s"
          + (f", bf16: {result['peak_bf16_flops'] / 1e12:.1f} TFLOP/s" if result["peak_bf16_flops"] else ""))
    print(f"default / seed-style: real tokens/s x{r['real_tokens_per_s']:.2f}, loss tokens/s "
          f"x{r['loss_tokens_per_s']:.2f}, epoch time x{r['epoch_time_speedup']:.2f} faster (target >= 6x)")
    print(f"wrote {_common.write_result('train_throughput' + ('_quick' if args.quick else ''), result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
