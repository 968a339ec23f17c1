"""Batched greedy generation (`generate_batched`) vs the one-prompt-at-a-time loop, same prompts.

Prompts are the built-in corpus's test split (turns before the last assistant turn), rendered
with the trained BPE's chat template. The model is the `tiny` shape (llama): by default freshly
initialized and trained for `--train-steps` steps on the packed blocks (so it has started to
emit `<|im_end|>`), or a saved checkpoint (`--model $EXP1_HOME/model_checkpoint/tiny`).

Both sides run in the same process, alternating for `--rounds` rounds; reported: median seconds,
prompts/s, the ratio (target >= 10x), and whether every greedy output is identical (mismatches
are listed: left padding changes float summation order, so near-tied logits can flip a token).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def load_prompts(splits_dir: Path, *, count: int) -> list[list[dict]]:
    import pyarrow.parquet as pq

    from exp1_assets.data.chat import prompt_and_reference

    rows = pq.read_table(splits_dir / "test.parquet", columns=["messages"]).column("messages").to_pylist()
    if len(rows) < count:
        raise ValueError(f"{splits_dir}/test.parquet has {len(rows)} rows, fewer than --prompts {count}")
    return [prompt_and_reference(m)[0] for m in rows[:count]]


def quick_train(model, packed_dir: Path, *, steps: int, batch: int) -> list[float]:
    """A few AdamW steps on the packed blocks (so greedy outputs are not random-init noise)."""
    import numpy as np
    import pyarrow as pa
    import torch

    with pa.memory_map(str(packed_dir / "train.arrow")) as source:
        table = pa.ipc.open_stream(source).read_all()
    length = len(table.column("input_ids")[0])
    cols = {c: torch.from_numpy(np.asarray(table.column(c).combine_chunks().flatten()).reshape(-1, length)
                                .astype(np.int64)) for c in ("input_ids", "labels", "position_ids")}
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(0)
    losses = []
    model.train()
    model.config.use_cache = False
    for _ in range(steps):
        rows = torch.randint(0, len(cols["input_ids"]), (batch,), generator=generator)
        loss = model(**{c: v[rows] for c, v in cols.items()}).loss
        if torch.isfinite(loss):  # a batch of prompt-only blocks has no target token
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
        optimizer.zero_grad(set_to_none=True)
    model.config.use_cache = True
    model.eval()
    return losses


def generate_token_budget(model, tokenizer, prompts, *, max_new_tokens: int, batch_size: int, token_budget: int):
    """The suggested fix, measured bench-side: batches capped by padded prompt tokens, not rows.

    Longest first; a batch closes when one more row would make rows x longest prompt exceed
    `token_budget` (or reach batch_size), so one long outlier no longer pads 31 short prompts.
    Each batch goes through the library's generate_batched unchanged.
    """
    from exp1_assets.evaluation.generation import generate_batched, render_prompts

    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in render_prompts(tokenizer, prompts)]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    groups, current = [], []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) >= batch_size or (len(current) + 1) * longest > token_budget):
            groups.append(current)
            current = []
        current.append(i)
    groups.append(current)
    results = [None] * len(prompts)
    for group in groups:
        for i, generation in zip(group, generate_batched(model, tokenizer, [prompts[i] for i in group],
                                                          max_new_tokens=max_new_tokens, batch_size=len(group))):
            results[i] = generation
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32, help="generate_batched batch size")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per side")
    parser.add_argument("--model", default="", help="a saved checkpoint dir (its tokenizer is used)")
    parser.add_argument("--train-steps", type=int, default=30, help="without --model: train this many steps first")
    parser.add_argument("--builtin-size", type=int, default=20_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--token-budget", type=int, default=0,
                        help="also time a third side: batches capped at this many padded prompt tokens")
    parser.add_argument("--quick", action="store_true", help="smoke settings: 4 prompts, 4 tokens, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.max_new_tokens, args.batch_size, args.rounds = 4, 4, 2, 1
        args.builtin_size, args.train_steps = 600, 1

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from exp1_assets.evaluation.generation import generate_batched, generate_one_at_a_time, render_prompts
    from exp1_assets.sizes import get_size
    from exp1_assets.training.model import build_model

    paths = _common.builtin_pipeline(builtin_size=args.builtin_size, max_length=256)
    prompts = load_prompts(paths["splits"], count=args.prompts)
    losses: list[float] = []
    if args.model:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model).to(args.device)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(paths["tokenizer"]))
        model = build_model(get_size("tiny"), architecture="llama", vocab_size=len(tokenizer),
                            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, seed=0).to(args.device)
        losses = quick_train(model, paths["packed"], steps=args.train_steps, batch=8)
    model.eval()

    times: dict[str, list[float]] = {"one_at_a_time": [], "batched": []}
    if args.token_budget:
        times["token_budget"] = []
    outputs: dict[str, list] = {}
    # Warm-up (thread pools, first-call dispatch) outside the timings.
    generate_batched(model, tokenizer, prompts[:2], max_new_tokens=2, batch_size=2)
    generate_one_at_a_time(model, tokenizer, prompts[:1], max_new_tokens=2)
    for round_index in range(args.rounds):
        sides = list(times) if round_index % 2 == 0 else list(reversed(times))
        for side in sides:
            start = time.perf_counter()
            if side == "token_budget":
                result = generate_token_budget(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                               batch_size=args.batch_size, token_budget=args.token_budget)
            elif side == "batched":
                result = generate_batched(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                          batch_size=args.batch_size)
            else:
                result = generate_one_at_a_time(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens)
            times[side].append(time.perf_counter() - start)
            outputs[side] = result
            print(f"  round {round_index} {side:14s} {times[side][-1]:7.2f}s", flush=True)

    single, batched = outputs["one_at_a_time"], outputs["batched"]
    mismatches = [{"prompt": i, "one_at_a_time": a.text[:120], "batched": b.text[:120]}
                  for i, (a, b) in enumerate(zip(single, batched)) if a.text != b.text]
    if "token_budget" in outputs:
        mismatches += [{"prompt": i, "one_at_a_time": a.text[:120], "token_budget": b.text[:120]}
                       for i, (a, b) in enumerate(zip(single, outputs["token_budget"])) if a.text != b.text]
    seconds = {side: _common.median(t) for side, t in times.items()}
    rows = [{"side": side, "median_s": seconds[side], "prompts_per_s": args.prompts / seconds[side],
             "new_tokens": sum(g.n_tokens for g in outputs[side]),
             "stopped": sum(g.stopped for g in outputs[side])} for side in times]
    ratio = seconds["one_at_a_time"] / seconds["batched"]
    if "token_budget" in seconds:
        print(f"token-budget batching ({args.token_budget} padded prompt tokens) / one-at-a-time: "
              f"x{seconds['one_at_a_time'] / seconds['token_budget']:.2f}")
    print()
    _common.print_table(rows, ["side", "median_s", "prompts_per_s", "new_tokens", "stopped"])
    print(f"\nbatched / one-at-a-time: x{ratio:.2f} prompts/s (target >= 10x); "
          f"greedy outputs identical: {len(prompts) - len(mismatches)}/{len(prompts)}")
    for m in mismatches[:5]:
        print(f"  mismatch prompt {m['prompt']}:\n    single : {m['one_at_a_time']!r}\n    batched: {m['batched']!r}")
    prompt_lengths = sorted(len(tokenizer(t, add_special_tokens=False)["input_ids"])
                            for t in render_prompts(tokenizer, prompts))
    result = {"settings": vars(args), "prompt_tokens": {"sum": sum(prompt_lengths), "max": prompt_lengths[-1],
                                                        "median": _common.median(prompt_lengths)}, "train_losses": losses[-5:], "times": times, "sides": rows,
              "ratio_prompts_per_s": ratio, "identical": len(prompts) - len(mismatches),
              "mismatches": mismatches, "target": 10.0, "meets_target": ratio >= 10.0 and not mismatches}
    print(f"wrote {_common.write_result('generation' + ('_quick' if args.quick else ''), result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
