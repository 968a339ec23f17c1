"""The project's training path vs a plain PyTorch loop (what nanoGPT does), torch.compile on and off.

  project:  the real job, `exp1_assets.training.train.main(spec.json)` (HF Trainer and callbacks).
  plain:    the same `TrainSpec` in a hand-written loop: the same model, blocks, AdamW settings,
            schedule, accumulation, clipping, threads and precision, no Trainer.
  +compile: `TrainSpec.compile=True` (the Trainer's `torch_compile`) / `torch.compile(model)`.

Lock step: each variant runs in its own process under the launcher's `accelerate launch` flags,
all alive at once, and the driver lets one of them run one optimizer step at a time, alternating
the order (ABCD, DCBA, ...), so load from other users of the machine hits every variant alike.
Timed: each step from the driver's go to its end, minus `Trainer.evaluate` (the initial
evaluation); tokens are non-pad input tokens, as the Trainer counts them. bench/README.md has
the details: what is timed, the rounds (cold and warm Inductor caches), the numbers reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

VARIANTS = ("project", "plain", "project+compile", "plain+compile")
RATIOS = {"project/plain": ("project", "plain"), "project/plain, both compiled": ("project+compile", "plain+compile"),
          "compile gain, project": ("project+compile", "project"), "compile gain, plain": ("plain+compile", "plain")}
TARGET = 0.9  # project / plain tokens/s


# ---- workers: one training run each, one optimizer step per turn -------------------------------

class Turns:
    """The worker's end of the lock step: say ready / step done, then block until the next go."""

    def __init__(self, address: str, variant: str, clock: dict) -> None:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(address)
        self.wire, self.clock = sock.makefile("rw", buffering=1), clock
        self.wire.write(variant + "\n")

    def wait(self, message: str) -> None:
        self.wire.write(message + "\n")
        start = time.perf_counter()
        if self.wire.readline().strip() != "go":
            raise RuntimeError("the benchmark driver went away")
        self.clock["resumed"] = time.perf_counter()
        self.clock["waited_s"] += self.clock["resumed"] - start

    def step_done(self, tokens: int) -> None:
        self.clock["steps"].append((self.clock["resumed"], time.perf_counter(), tokens))
        self.wait("done")


def run_project(spec_path: Path, turns: Turns, clock: dict) -> None:
    """The real job's entry point; the benchmark only adds a callback that takes turns."""
    from transformers import Trainer, TrainerCallback

    from exp1_assets.training.train import main

    class TakeTurns(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):  # noqa: ANN001 - HF signature
            clock["optimizer"] = describe_optimizer(optimizer)
            turns.wait("ready")

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 - HF signature
            turns.step_done(int(state.num_input_tokens_seen))

    init, evaluate = Trainer.__init__, Trainer.evaluate

    @functools.wraps(init)
    def init_taking_turns(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(TakeTurns())  # last: its on_step_end comes after the job's own callbacks

    @functools.wraps(evaluate)
    def timed_evaluate(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return evaluate(self, *args, **kwargs)
        finally:
            clock["excluded"].append((start, time.perf_counter()))

    Trainer.__init__, Trainer.evaluate = init_taking_turns, timed_evaluate
    if main([str(spec_path)]) != 0:
        raise RuntimeError("the training job failed")


def run_plain(spec_path: Path, turns: Turns, clock: dict) -> None:
    """nanoGPT's loop on the project's model and blocks: forward, backward, clip, step, schedule."""
    import torch
    from transformers import AutoTokenizer

    from exp1_assets.data.blocks import collate_blocks, load_blocks
    from exp1_assets.sizes import get_size
    from exp1_assets.training.model import build_model
    from exp1_assets.training.spec import TrainSpec
    from exp1_assets.training.train import fused_adamw_available

    spec = TrainSpec.read(spec_path)
    tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer_path)
    blocks = load_blocks(spec.train_path, max_length=spec.max_length, vocab_size=len(tokenizer))
    model = build_model(get_size(spec.size), architecture=spec.architecture, vocab_size=len(tokenizer),
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, dropout=spec.dropout, seed=spec.seed,
                        attn_implementation=spec.attn_implementation)
    model.config.use_cache = False  # packed rows: the cache path ignores position_ids (DESIGN.md)
    model.train()
    # The Trainer decays all but biases and norm weights: here exactly the 1-d parameters
    # (nanoGPT's rule). The JSON records both sides' groups, so a mismatch would show.
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": spec.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=spec.learning_rate, betas=(spec.adam_beta1, spec.adam_beta2),
                                  **({"fused": True} if fused_adamw_available() else {}))
    # HF's cosine schedule: linear warmup (warmup_ratio of the steps, rounded up), half a cosine to 0.
    warmup = spec.warmup_steps or math.ceil(spec.max_steps * spec.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (
        step / max(1, warmup) if step < warmup
        else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, spec.max_steps - warmup)))))
    loader = torch.utils.data.DataLoader(blocks, batch_size=spec.per_device_batch, shuffle=True,
                                         collate_fn=collate_blocks,
                                         generator=torch.Generator().manual_seed(spec.data_seed))
    forward = torch.compile(model) if spec.compile else model
    clock["optimizer"] = describe_optimizer(optimizer)

    turns.wait("ready")
    batches, tokens = iter(loader), 0
    for step in range(1, spec.max_steps + 1):
        for _ in range(spec.grad_accum):
            batch = next(batches, None)
            if batch is None:  # a new epoch, reshuffled
                batches = iter(loader)
                batch = next(batches)
            tokens += int((batch["input_ids"] != tokenizer.pad_token_id).sum())
            loss = forward(**batch).loss / spec.grad_accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % spec.logging_steps == 0:
            clock["last_loss"] = float(loss) * spec.grad_accum  # a sync, as the Trainer's logging has
        turns.step_done(tokens)


def describe_optimizer(optimizer) -> list[dict]:  # noqa: ANN001 - any torch optimizer
    return [{"params": sum(p.numel() for p in g["params"]), "weight_decay": g["weight_decay"], "lr": g["lr"],
             "betas": list(g["betas"]), "fused": bool(g.get("fused"))} for g in optimizer.param_groups]


def worker(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    clock: dict[str, Any] = {"steps": [], "excluded": [], "waited_s": 0.0}
    turns = Turns(args.baton, args.variant, clock)
    (run_project if args.variant.startswith("project") else run_plain)(args.spec, turns, clock)
    args.record.write_text(json.dumps(clock))
    return 0


# ---- driver: a round of workers, their turns, the numbers -------------------------------------

def start_round(*, spec, variants: list[str], work: Path, threads: int, baton: str) -> dict[str, dict]:  # noqa: ANN001
    """Every variant's process at once, under the launcher's own `accelerate launch` flags."""
    from exp1_assets.launch.accelerate import accelerate_args, free_port

    runs = {}
    for variant in variants:
        name = variant.replace("+", "_")
        run = Path(tempfile.mkdtemp(dir=work, prefix=name + "-"))
        run_spec = dataclasses.replace(spec, compile=variant.endswith("+compile"), output_dir=str(run / "model"),
                                       run_dir=str(run / "run"))
        flags = accelerate_args(num_processes=1, num_machines=1, machine_rank="0", main_process_ip="127.0.0.1",
                                main_process_port=str(free_port()), cpu_threads_per_process=threads)
        cmd = [sys.executable, "-m", "accelerate.commands.launch", *flags, __file__, "--worker", "--variant", variant,
               "--spec", str(run_spec.write(run / "spec.json")), "--record", str(run / "clock.json"),
               "--threads", str(threads), "--baton", baton]
        cache = work / f"inductor-{name}"  # one per variant and invocation: round 0 cold, later rounds warm
        # CPU only: with a GPU visible the job would train there, and this loop is written for the CPU.
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
        with open(run / "worker.log", "w") as log:  # its own session: on failure we kill its whole group
            proc = subprocess.Popen(cmd, cwd=_common.REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        runs[variant] = {"dir": run, "proc": proc, "cache": "warm" if cache.is_dir() else "cold"}
    return runs


def failure(variant: str, run: dict) -> RuntimeError:
    log = (run["dir"] / "worker.log").read_text()[-4000:]
    return RuntimeError(f"{variant} worker failed (exit {run['proc'].poll()}):\n{log}")


def lock_step(runs: dict[str, dict], server: socket.socket, *, steps: int) -> None:
    """One optimizer step per turn, alternating the order (ABCD, DCBA, ...), then let all finish."""
    wires: dict[str, Any] = {}
    while len(wires) < len(runs):
        try:
            conn, _ = server.accept()
        except socket.timeout:  # a worker that died before connecting never will
            if dead := [v for v, run in runs.items() if run["proc"].poll() is not None]:
                raise failure(dead[0], runs[dead[0]]) from None
            continue
        wire = conn.makefile("rw", buffering=1)
        wires[wire.readline().strip()] = wire

    def expect(variant: str, message: str) -> None:
        if wires[variant].readline().strip() != message:  # "": the worker died
            runs[variant]["proc"].wait(timeout=30)
            raise failure(variant, runs[variant])

    for variant in runs:
        expect(variant, "ready")
    for step in range(steps):
        for variant in (list(runs) if step % 2 == 0 else list(runs)[::-1]):
            wires[variant].write("go\n")
            expect(variant, "done")
    for wire in wires.values():
        wire.write("go\n")  # the rest is untimed: final evaluation, checkpoint, save


def summarize_run(clock: dict, *, warmup_steps: int) -> dict[str, Any]:
    """Tokens/s over all timed steps and over the steady ones (after `warmup_steps`)."""
    def excluded(start: float, end: float) -> float:
        return sum(max(0.0, min(b, end) - max(a, start)) for a, b in clock["excluded"])

    step_s = [end - start - excluded(start, end) for start, end, _ in clock["steps"]]
    tokens = [n for _, _, n in clock["steps"]]
    step_rates = [(n - before) / s for n, before, s in zip(tokens, [0, *tokens], step_s)]
    # The median steady step: what a step costs when no burst of other users' load hits it.
    median_step_s = _common.median(step_s[warmup_steps:])
    return {"tokens": tokens[-1], "tokens_per_s": tokens[-1] / sum(step_s),
            "steady_tokens_per_s": (tokens[-1] - tokens[warmup_steps - 1]) / sum(step_s[warmup_steps:]),
            "median_step_tokens_per_s": _common.median(step_rates[warmup_steps:]),
            "median_step_s": median_step_s, "first_step_s": step_s[0],
            # What the first steps cost beyond steady ones: compilation, allocator and cache warm-up.
            "warmup_overhead_s": sum(step_s[:warmup_steps]) - warmup_steps * median_step_s,
            "eval_s": sum(b - a for a, b in clock["excluded"] if a < clock["steps"][-1][1]),
            "waited_s": clock["waited_s"], "optimizer": clock["optimizer"], "step_s": step_s,
            "step_rates": step_rates, "warmup_steps": warmup_steps}


def collect(variant: str, run: dict, *, round_: int, warmup_steps: int) -> dict[str, Any]:
    """A finished worker's numbers; for the project also the job's own train_result.json."""
    if run["proc"].wait() != 0:
        raise failure(variant, run)
    clock = json.loads((run["dir"] / "clock.json").read_text())
    result = {"round": round_, "variant": variant, **summarize_run(clock, warmup_steps=warmup_steps),
              "compile_cache": run["cache"] if variant.endswith("+compile") else None}
    if variant.startswith("project"):  # the job's tokens/s over all of trainer.train(), less its waits
        job = json.loads((run["dir"] / "model" / "train_result.json").read_text())
        result.update(job=job, job_tokens_per_s=job["tokens_seen"] / (job["train_time_s"] - clock["waited_s"]))
    return result


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import pyarrow as pa

    from exp1_assets.data.blocks import load_block_arrays, record_batch
    from exp1_assets.training.spec import TrainSpec

    size = TrainSpec.from_size(args.size, train_path="-", validation_path="-", tokenizer_path="-", output_dir="-",
                               run_dir="-")
    paths = _common.builtin_pipeline(builtin_size=args.builtin_size, max_length=size.max_length)
    _common.OUT_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=_common.OUT_DIR, prefix="train_vs_plain-"))
    baton = Path(tempfile.mkdtemp(prefix="tvp-")) / "baton"  # /tmp: a unix socket path must fit ~100 bytes
    # The evaluations are not timed; a few validation blocks keep their wall time short.
    blocks = load_block_arrays(paths["packed"] / "validation.arrow")
    with pa.OSFile(str(work / "validation.arrow"), "wb") as sink, \
            pa.ipc.new_stream(sink, record_batch(blocks).schema) as writer:
        writer.write_batch(record_batch({k: v[:args.eval_blocks] for k, v in blocks.items()}))
    spec = dataclasses.replace(size, train_path=str(paths["packed"] / "train.arrow"),
                               validation_path=str(work / "validation.arrow"), tokenizer_path=str(paths["tokenizer"]),
                               max_steps=args.steps, per_device_batch=args.batch or size.per_device_batch,
                               eval_steps=args.steps, save_steps=args.steps)  # both only after the last step
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(baton))
    server.listen()
    server.settimeout(1.0)
    results: list[dict] = []
    try:
        for round_ in range(args.rounds):
            runs = start_round(spec=spec, variants=args.variants, work=work, threads=args.threads, baton=str(baton))
            try:
                lock_step(runs, server, steps=args.steps)
                for variant, run in runs.items():
                    result = collect(variant, run, round_=round_, warmup_steps=args.warmup_steps)
                    results.append(result)
                    print(f"  round {round_} {variant:16s} {result['tokens_per_s']:8,.0f} tok/s (steady "
                          f"{result['steady_tokens_per_s']:,.0f}), first step {result['first_step_s']:.2f}s",
                          flush=True)
            finally:
                for run in runs.values():
                    if run["proc"].poll() is None:  # only after a failure: our own worker's group
                        os.killpg(run["proc"].pid, signal.SIGKILL)
                    shutil.rmtree(run["dir"], ignore_errors=True)
    finally:
        server.close()
        shutil.rmtree(baton.parent, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return {"settings": {**vars(args), "spec": spec.to_dict()}, "runs": results, **summarize(results, args.variants)}


def summarize(runs: list[dict], variants: list[str]) -> dict[str, Any]:
    """Per variant: medians over rounds. Ratios: paired within each round, then median and range."""
    def of(variant: str) -> list[dict]:
        return [r for r in runs if r["variant"] == variant]

    sides = {}
    for variant in variants:
        mine = of(variant)
        keys = ["tokens_per_s", "steady_tokens_per_s", "median_step_tokens_per_s", "median_step_s",
                "first_step_s", "warmup_overhead_s", "eval_s", "job_tokens_per_s"]
        sides[variant] = {key: _common.median([r[key] for r in mine]) for key in keys if key in mine[0]}
        sides[variant].update(tokens=mine[0]["tokens"], optimizer=mine[0]["optimizer"])
        if variant.endswith("+compile"):  # warm-up by cache state, and the steps until compile pays back
            for cache in ("cold", "warm"):
                overheads = [r["warmup_overhead_s"] for r in mine if r["compile_cache"] == cache]
                sides[variant][f"warmup_overhead_{cache}_s"] = _common.median(overheads) if overheads else None
            eager = sides.get(variant.removesuffix("+compile"))
            saved = eager["median_step_s"] - sides[variant]["median_step_s"] if eager else float("nan")
            cold = sides[variant]["warmup_overhead_cold_s"]
            sides[variant].update(saved_s_per_step=saved, break_even_steps_cold=cold / saved if saved > 0 else None)
    # Three estimates per ratio, each paired within a round: all steps, steady steps (both totals:
    # every cost counts, and so does every burst of other users' load), and the median over steady
    # steps of step-by-step ratios (the two steps ran back to back, so a burst rarely hits one alone).
    def ratio(top: dict, bottom: dict, key: str) -> float:
        if key != "step_by_step":
            return top[key] / bottom[key]
        return _common.median([a / b for a, b in zip(top["step_rates"], bottom["step_rates"])][top["warmup_steps"]:])

    ratios: dict[str, dict] = {}
    for name, (top, bottom) in RATIOS.items():
        for key in ("tokens_per_s", "steady_tokens_per_s", "step_by_step") if {top, bottom} <= set(variants) else ():
            paired = [ratio(t, b, key) for t, b in zip(of(top), of(bottom))]
            ratios.setdefault(name, {})[key] = {"median": _common.median(paired), "min": min(paired),
                                                "max": max(paired), "rounds": paired}
    headline = ratios["project/plain"]["tokens_per_s"]["median"]
    return {"sides": sides, "ratios": ratios, "target": {"project/plain": TARGET}, "meets_target": headline >= TARGET}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", help="model size (its batch, accumulation, lr, block length)")
    parser.add_argument("--builtin-size", type=int, default=20_000, help="built-in corpus conversations")
    parser.add_argument("--batch", type=int, default=0, help="blocks per micro-batch (0: the size's)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--warmup-steps", type=int, default=6, help="first steps left out of the steady rate")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of fresh processes (round 0: cold compile)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: the launcher's choice)")
    parser.add_argument("--eval-blocks", type=int, default=8, help="validation blocks (the untimed evaluations)")
    parser.add_argument("--quick", action="store_true", help="smoke settings: 600 rows, batch 2, 3 steps, no compile")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for hidden, kind in (("--variant", str), ("--baton", str), ("--spec", Path), ("--record", Path)):
        parser.add_argument(hidden, type=kind, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    from exp1_assets.launch.accelerate import cpu_threads_per_process

    args.threads = args.threads or cpu_threads_per_process(1)
    if args.quick:
        args.builtin_size, args.batch, args.steps, args.warmup_steps, args.rounds = 600, 2, 3, 1, 1
        args.variants = "project,plain"
    args.variants = [v.strip() for v in args.variants.split(",")]
    if not {"project", "plain"} <= set(args.variants) <= set(VARIANTS):
        parser.error(f"--variants: project and plain, plus any of {VARIANTS[2:]}; got {args.variants}")
    if not 1 <= args.warmup_steps < args.steps or args.eval_blocks < 1:
        parser.error("--warmup-steps: at least 1 and fewer than --steps; --eval-blocks: at least 1")

    result = measure(args)
    print()
    _common.print_table([{"variant": name, **side} for name, side in result["sides"].items()],
                        ["variant", "tokens_per_s", "steady_tokens_per_s", "median_step_tokens_per_s",
                         "first_step_s", "warmup_overhead_s", "eval_s", "job_tokens_per_s"])
    print()
    print(f"{'ratio (median, range over rounds)':30s} {'all steps':20s} {'steady steps':20s} step by step")
    for name, ratio in result["ratios"].items():
        print(f"{name:30s} " + " ".join(f"x{r['median']:.3f} ({r['min']:.2f}-{r['max']:.2f})".ljust(20)
                                        for r in ratio.values()))
    for name, side in result["sides"].items():
        if name.endswith("+compile"):
            warm, even = side["warmup_overhead_warm_s"], side["break_even_steps_cold"]
            print(f"{name}: warm-up {side['warmup_overhead_cold_s']:.1f} s cold, "
                  f"{'-' if warm is None else f'{warm:.1f}'} s warm; saves {side['saved_s_per_step']:.3f} s/step; "
                  f"pays back after {'never' if even is None else f'{even:.0f}'} steps (cold)")
    print(f"target project/plain >= {TARGET}: {'met' if result['meets_target'] else 'missed'}")
    print(f"wrote {_common.write_result('train_vs_plain_loop' + ('_quick' if args.quick else ''), result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
