"""Batched generation (`generate_batched`) vs the one-prompt-at-a-time loop, same prompts.

Two workloads, each the setting of the asset it stands for (`--workload`): `eval` — the built-in
corpus's test-split prompts (turns before the last assistant turn), greedy, 128 new tokens;
`samples` — the sample set's default prompts, sampled (T 0.85, top-p 0.9, repetition penalty 1.1). The model is the `tiny` shape (llama): by default freshly
initialized and trained for `--train-steps` steps on the packed blocks (so it has started to
emit `<|im_end|>`), or a saved checkpoint (`--model $EXP1_HOME/model_checkpoint/tiny`).

Both sides run in the same process, alternating for `--rounds` rounds; reported: median seconds,
prompts/s, the ratio (target >= 10x), and for greedy whether every output is identical
(mismatches are listed).
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
    import torch

    from exp1_assets.data.blocks import load_block_arrays

    # The blocks go where the model is (`--device cuda`): indexing CPU rows into a GPU model fails.
    device = next(model.parameters()).device
    cols = {c: torch.from_numpy(array.astype(np.int64)).to(device)
            for c, array in load_block_arrays(packed_dir / "train.arrow").items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(0)
    losses = []
    model.train()
    model.config.use_cache = False
    for _ in range(steps):
        rows = torch.randint(0, len(cols["input_ids"]), (batch,), generator=generator).to(device)
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


def generate_hf_batches(model, tokenizer, prompts, *, max_new_tokens: int, batch_size: int, sampling: dict):
    """The previous library path, kept as a side: the same batches, each through `model.generate`.

    `generate` keeps every row of a batch decoding until its last row stops; the library's
    `decode_stream` drops finished rows and refills the batch. This side shows what that (and its leaner step) is worth.
    """
    import torch

    from exp1_assets.evaluation.generation import (
        _batches, _decode_new_tokens, _generate_kwargs, _left_padding, end_of_turn_id, prompt_budget, render_prompts)

    kwargs = _generate_kwargs(tokenizer=tokenizer, max_new_tokens=max_new_tokens, **sampling)
    texts = render_prompts(tokenizer, prompts)
    budget = prompt_budget(model, max_new_tokens=max_new_tokens)
    lengths = [min(budget, len(ids)) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    results = [None] * len(texts)
    with torch.inference_mode(), _left_padding(tokenizer):
        for index, group in enumerate(_batches(order, lengths, batch_size=batch_size, token_budget=4096)):
            enc = tokenizer([texts[i] for i in group], return_tensors="pt", padding=True, truncation=True,
                            max_length=budget, add_special_tokens=False).to(model.device)
            torch.manual_seed(index)
            out = model.generate(**enc, **kwargs)
            for row, i in enumerate(group):
                results[i] = _decode_new_tokens(tokenizer, out[row, enc["input_ids"].shape[1]:],
                                                eos_id=end_of_turn_id(tokenizer))
    return results


WORKLOADS = {
    # The evaluation asset: test-split prompts, greedy (outputs must be identical across sides).
    "eval": dict(do_sample=False, temperature=1.0, top_p=1.0, repetition_penalty=1.0),
    # The sample_set asset: the default prompt set, sampled like its middle temperature.
    "samples": dict(do_sample=True, temperature=0.85, top_p=0.9, repetition_penalty=1.1),
}


def workload_prompts(workload: str, splits_dir: Path, *, count: int) -> list[list[dict]]:
    if workload == "eval":
        return load_prompts(splits_dir, count=count)
    from exp1_assets.evaluation.prompts import load_prompts as sample_prompts

    default = [[{"role": "user", "content": p["prompt"]}] for p in sample_prompts(inline=None, path=None)]
    return [default[i % len(default)] for i in range(count)]  # the sample job repeats them per variation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="eval")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=128, help="the evaluation and sample jobs' default")
    parser.add_argument("--batch-size", type=int, default=64, help="the jobs' default")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per side")
    parser.add_argument("--model", default="", help="a saved checkpoint dir (its tokenizer is used)")
    parser.add_argument("--train-steps", type=int, default=30, help="without --model: train this many steps first")
    parser.add_argument("--builtin-size", type=int, default=20_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hf-generate-side", action="store_true",
                        help="also time the same batches through model.generate (the previous library path)")
    parser.add_argument("--quick", action="store_true", help="smoke settings: 4 prompts, 4 tokens, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.max_new_tokens, args.batch_size, args.rounds = 4, 4, 2, 1
        args.builtin_size, args.train_steps = 600, 1

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from exp1_assets.evaluation.generation import generate_batched, generate_one_at_a_time, render_prompts
    from exp1_assets.sizes import get_size
    from exp1_assets.training.model import build_model

    paths = _common.builtin_pipeline(builtin_size=args.builtin_size, max_length=256)
    prompts = workload_prompts(args.workload, paths["splits"], count=args.prompts)
    sampling = WORKLOADS[args.workload]
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

    sides = {
        "one_at_a_time": lambda: generate_one_at_a_time(model, tokenizer, prompts,
                                                        max_new_tokens=args.max_new_tokens, **sampling),
        "batched": lambda: generate_batched(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                            batch_size=args.batch_size, **sampling),
    }
    if args.hf_generate_side:
        sides["hf_generate_batches"] = lambda: generate_hf_batches(
            model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
            sampling=sampling)
    times: dict[str, list[float]] = {side: [] for side in sides}
    outputs: dict[str, list] = {}
    # Warm-up (thread pools, first-call dispatch) outside the timings.
    generate_batched(model, tokenizer, prompts[:2], max_new_tokens=2, batch_size=2)
    generate_one_at_a_time(model, tokenizer, prompts[:1], max_new_tokens=2)
    for round_index in range(args.rounds):
        order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
        for side in order:
            start = time.perf_counter()
            outputs[side] = sides[side]()
            times[side].append(time.perf_counter() - start)
            print(f"  round {round_index} {side:20s} {times[side][-1]:7.2f}s", flush=True)

    greedy = not sampling["do_sample"]
    mismatches = [{"prompt": i, "side": side, "one_at_a_time": a.text[:120], "other": b.text[:120]}
                  for side in outputs if side != "one_at_a_time"
                  for i, (a, b) in enumerate(zip(outputs["one_at_a_time"], outputs[side])) if a != b] if greedy else []
    seconds = {side: _common.median(t) for side, t in times.items()}
    rows = [{"side": side, "median_s": seconds[side], "prompts_per_s": args.prompts / seconds[side],
             "x_vs_one": seconds["one_at_a_time"] / seconds[side],
             "new_tokens": sum(g.n_tokens for g in outputs[side]),
             "stopped": sum(g.stopped for g in outputs[side])} for side in times]
    ratio = seconds["one_at_a_time"] / seconds["batched"]
    print()
    _common.print_table(rows, ["side", "median_s", "prompts_per_s", "x_vs_one", "new_tokens", "stopped"])
    identical = len(prompts) - len({m["prompt"] for m in mismatches}) if greedy else None
    print(f"\n{args.workload}: batched / one-at-a-time: x{ratio:.2f} prompts/s (target >= 10x); greedy outputs "
          f"identical: {'n/a (sampled)' if identical is None else f'{identical}/{len(prompts)}'}")
    for m in mismatches[:5]:
        print(f"  mismatch prompt {m['prompt']} ({m['side']}):\n    single: {m['one_at_a_time']!r}\n    other : {m['other']!r}")
    prompt_lengths = sorted(len(tokenizer(t, add_special_tokens=False)["input_ids"])
                            for t in render_prompts(tokenizer, prompts))
    result = {"settings": vars(args), "sampling": sampling, "threads": torch.get_num_threads(),
              "prompt_tokens": {"sum": sum(prompt_lengths), "max": prompt_lengths[-1],
                                "median": _common.median(prompt_lengths)},
              "train_losses": losses[-5:], "times": times, "sides": rows,
              "ratio_prompts_per_s": ratio, "identical": identical, "mismatches": mismatches,
              "target": 10.0, "meets_target": ratio >= 10.0 and not mismatches}
    name = f"generation_{args.workload}" + ("_quick" if args.quick else "")
    print(f"wrote {_common.write_result(name, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
