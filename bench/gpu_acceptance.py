"""GPU acceptance in one command (`bench/gpu_acceptance.sh` wraps it): JSON + Markdown in `--out`.

Sections, each timed, each recording its own failure or skip instead of ending the run:
  environment  devices, versions, flash-attn, the dense bf16 peak that MFU divides by
  train        `--size` (125M) for `--steps` (200) at `--seq-len` (1024), bf16, through the library's
               training job under `accelerate launch`, at the memory plan's micro-batch, accumulation
               and checkpointing: steady-state tokens/s, MFU, peak memory vs `plan_training`
  attention    each attention implementation this machine has: packed == unpacked logits on the
               device, and tokens/s over `--attn-steps`
  generation   `generate_batched` vs HF `generate` one prompt at a time: identical greedy replies, prompts/s
  fsdp_vs_ddp  with >= 2 devices (or `--cpu-ranks 2`): ddp vs fsdp_full from the same init and data:
               losses agree, tokens/s, peak memory per rank

Checks fail the run (exit 1); figures are reported (MFU against the plan's 40% is a figure).
`--device cpu --quick` runs every section that can run on a CPU at smoke size (the test suite does).
Data: synthetic packed blocks at vocab 50257 on a GPU (tokens/s depends on the shape, not the words);
the generation section trains a tiny model on the built-in corpus, as bench/generation.py does.
bench/README.md ("gpu_acceptance.sh") says how each number is made.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import gpu_acceptance_checks as checks  # noqa: E402

# Generation runs in this process, without a timeout of its own: before the section whose jobs have one.
SECTIONS = ("environment", "train", "attention", "generation", "fsdp_vs_ddp")

# Per-device defaults: (size, seq_len, vocab, steps, attn_steps, fsdp_steps, gen prompts, gen new tokens, budget s)
DEFAULTS = {"cuda": ("125M", 1024, 50257, 200, 50, 30, 64, 128, 540),
            "cpu": ("tiny", 256, 4096, 20, 6, 6, 16, 32, 600)}
# --quick: one training job (the attention section checks logits only), small rows, few tokens.
QUICK = {"seq_len": 128, "micro_batch": 4, "steps": 3, "attn_steps": 0, "fsdp_steps": 3, "gen_prompts": 4,
         "gen_new_tokens": 8, "gen_builtin_size": 600}
# Rough seconds a section needs on each device; a section starts only if the budget has that left.
NEEDS_S = {"cuda": {"train": 90, "attention": 60, "fsdp_vs_ddp": 90, "generation": 45},
           "cpu": {"train": 15, "attention": 15, "fsdp_vs_ddp": 40, "generation": 10}}
RESERVE_S = 15  # kept back from every job's timeout for writing the report


def peak_bf16_tflops() -> tuple[tuple[str, float], ...]:
    """Dense bf16 peak per device, TFLOP/s (NVIDIA's specs), by a part of the device name; first match
    wins. The memory plan's machines (A100, RTX 4090) keep their numbers in one place, memory_plan.MACHINES."""
    from exp1_assets.training.memory_plan import MACHINES

    return (("H100 NVL", 835.0), ("H200 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0),
            ("A100", MACHINES["8x80GiB"].peak_tflops), ("RTX 4090", MACHINES["1x24GiB"].peak_tflops))


class Skipped(Exception):
    """A section (or part) that cannot run here; the message says why."""


class Stopped(Exception):
    """SIGTERM (the shell script's overall timeout): the running section fails, the report is still written."""


@dataclasses.dataclass
class Run:
    args: argparse.Namespace
    started: float
    work: Path
    devices: int = 1
    device_memory_gib: float = 0.0
    peak_tflops: float | None = None
    peak_source: str = ""
    data: checks.Data | None = None
    train: dict[str, Any] | None = None
    section: str = "environment"
    stopped: bool = False

    @property
    def threads(self) -> int | None:
        """CPU --quick: one thread per process. On a shared machine two OpenMP threads per process
        fighting other jobs for two cores made a tiny step ~10x slower than one thread."""
        return 1 if self.args.quick and not self.cuda else None

    def left_s(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.started)

    def selected(self, name: str) -> bool:
        return name == "environment" or not self.args.only or name in self.args.only.split(",")

    def job_timeout_s(self) -> float:
        """What is left, less what the sections after this one need: a slow job must not starve them."""
        later = SECTIONS[SECTIONS.index(self.section) + 1:]
        ranks = self.devices if self.cuda else self.args.cpu_ranks
        owed = sum(NEEDS_S[self.args.device][n] for n in later
                   if self.selected(n) and (n != "fsdp_vs_ddp" or ranks >= 2))
        return max(NEEDS_S[self.args.device][self.section], self.left_s() - RESERVE_S - owed)

    @property
    def cuda(self) -> bool:
        return self.args.device == "cuda"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="smoke settings (seconds; numbers meaningless)")
    parser.add_argument("--out", type=Path, default=_common.BENCH_DIR / "results", help="where the JSON + .md go")
    parser.add_argument("--work-dir", type=Path, help="data, runs, checkpoints (default: a fresh bench/out/ folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--budget-s", type=float, help="total seconds; sections that would not fit are skipped")
    parser.add_argument("--only", help="comma-separated sections to run (environment always runs)")
    parser.add_argument("--size")
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--vocab-size", type=int)
    parser.add_argument("--steps", type=int, help="optimizer steps of the train section")
    parser.add_argument("--micro-batch", type=int, help="instead of the memory plan's (then accumulation 1)")
    parser.add_argument("--attn-steps", type=int, help="steps per attention implementation (0: logits only)")
    parser.add_argument("--fsdp-steps", type=int)
    parser.add_argument("--cpu-ranks", type=int, default=1, help="--device cpu: gloo ranks for fsdp_vs_ddp (2 runs it)")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak per device, for a GPU not in the table")
    parser.add_argument("--gen-prompts", type=int)
    parser.add_argument("--gen-new-tokens", type=int)
    parser.add_argument("--gen-builtin-size", type=int, help="built-in conversations for the generation model")
    args = parser.parse_args(argv)
    size, seq_len, vocab, steps, attn_steps, fsdp_steps, prompts, new_tokens, budget = DEFAULTS[args.device]
    defaults = {"size": size, "seq_len": seq_len, "vocab_size": vocab, "steps": steps, "attn_steps": attn_steps,
                "fsdp_steps": fsdp_steps, "gen_prompts": prompts, "gen_new_tokens": new_tokens, "budget_s": budget,
                "gen_builtin_size": 3000, **(QUICK if args.quick else {})}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not args.budget_s > 0:
        parser.error(f"--budget-s: must be positive, got {args.budget_s}")
    unknown = set((args.only or "").split(",")) - set(SECTIONS) - {""}
    if unknown:
        parser.error(f"--only: unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


# ---- sections ----------------------------------------------------------------------------------

def environment(run: Run) -> dict[str, Any]:
    import accelerate
    import torch
    import transformers

    info: dict[str, Any] = {"torch": torch.__version__, "transformers": transformers.__version__,
                            "accelerate": accelerate.__version__, "cuda_available": torch.cuda.is_available()}
    try:
        import flash_attn
        info["flash_attn"] = flash_attn.__version__
    except ImportError:
        info["flash_attn"] = None
    result: dict[str, Any] = {"info": info, "checks": {}}
    if run.cuda:
        result["checks"]["cuda_available"] = {"passed": torch.cuda.is_available()}
        if not torch.cuda.is_available():
            return result
        props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
        info["gpus"] = [{"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                         "capability": f"{p.major}.{p.minor}"} for p in props]
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
        run.devices, run.device_memory_gib = len(props), props[0].total_memory / 2**30
        match = next(((key, peak) for key, peak in peak_bf16_tflops() if key in props[0].name), None)
        if run.args.peak_tflops:
            run.peak_tflops, run.peak_source = run.args.peak_tflops, "--peak-tflops"
        elif match:
            run.peak_tflops, run.peak_source = match[1], f"spec sheet ({match[0]}, dense bf16)"
        measured = _common.peak_matmul_flops(device="cuda", dtype=torch.bfloat16, n=8192, seconds=2.0) / 1e12
        torch.cuda.empty_cache()  # this process's cached blocks would sit on GPU 0 during the jobs
        dtype_name = "bf16"
    else:
        run.device_memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        measured = _common.peak_matmul_flops(device="cpu", seconds=1.0 if run.args.quick else 3.0) / 1e12
        dtype_name = "fp32"
    if run.peak_tflops is None:  # no spec peak: MFU against what a large matmul reaches here
        run.peak_tflops, run.peak_source = measured, f"measured {dtype_name} matmul (no spec peak for this device)"
    result["peak"] = {"tflops_per_device": run.peak_tflops, "source": run.peak_source,
                      "measured_matmul_tflops": measured, "devices": run.devices}
    return result


def _plan(run: Run) -> Any:
    from exp1_assets.sizes import get_size
    from exp1_assets.training.memory_plan import Machine, plan_training

    machine = Machine(devices=1, device_memory_gib=run.device_memory_gib, peak_tflops=run.peak_tflops)
    return plan_training(get_size(run.args.size), machine=machine, vocab_size=run.args.vocab_size,
                         seq_len=run.args.seq_len, precision="bf16" if run.cuda else "fp32", architecture="llama")


def _data(run: Run) -> checks.Data:
    if run.data is None:
        run.data = checks.make_data(run.work / "data", vocab_size=run.args.vocab_size, max_length=run.args.seq_len,
                                    train_blocks=256 if run.args.quick else 1024,
                                    # every rank evaluates at least two blocks of its own
                                    validation_blocks=max(4, 2 * max(run.devices, run.args.cpu_ranks)))
    return run.data


def _train_overrides(run: Run, plan: Any, *, steps: int, **more: Any) -> dict[str, Any]:
    micro, accum = (run.args.micro_batch, 1) if run.args.micro_batch else (plan.micro_batch, plan.grad_accum)
    return {"max_steps": steps, "per_device_batch": micro, "grad_accum": accum, "seed": 0, "data_seed": 0,
            "gradient_checkpointing": plan.gradient_checkpointing, "precision": "bf16" if run.cuda else "fp32",
            "logging_steps": 10, **more}


def _mfu(run: Run, plan: Any, job: dict[str, Any]) -> float:
    """Achieved FLOP/s over devices x peak, with the plan's FLOPs per token (memory_plan.flops_per_token)."""
    from exp1_assets.sizes import get_size
    from exp1_assets.training.memory_plan import flops_per_token

    per_token = flops_per_token(get_size(run.args.size), params=job["param_count"], seq_len=job["seq_len"],
                                checkpointing=job["gradient_checkpointing"])
    achieved = job["timed_tokens"] * per_token / job["timed_s"]
    return achieved / (job["world_size"] * run.peak_tflops * 1e12)


def train(run: Run) -> dict[str, Any]:
    from exp1_assets.training.memory_plan import PLANNED_MFU

    plan = _plan(run)
    job = checks.run_training(name="train", work=run.work, data=_data(run), size=run.args.size, processes=1,
                              timeout_s=run.job_timeout_s(), threads=run.threads,
                              overrides=_train_overrides(run, plan, steps=run.args.steps))
    run.train = job
    job["mfu"] = _mfu(run, plan, job)
    result: dict[str, Any] = {"job": job, "plan": plan.to_dict(), "planned_mfu": PLANNED_MFU, "checks": {
        "loss_fell": {"passed": job["val_loss_after"] < job["val_loss_before"],
                      "value": [job["val_loss_before"], job["val_loss_after"]]}}}
    if job["peak_reserved_gib"] is not None:
        # The plan's total includes its reserve for the CUDA context and fragmentation; the allocator's
        # reserved bytes are what it holds besides the context, so they must fit under that total.
        result["checks"]["peak_memory_within_plan"] = {"passed": job["peak_reserved_gib"] <= plan.total_gib,
                                                       "value": round(job["peak_reserved_gib"], 2),
                                                       "limit": plan.total_gib}
    return result


def attention(run: Run) -> dict[str, Any]:
    import torch

    from exp1_assets.training.model import ATTENTION_IMPLEMENTATIONS, require_attention

    data, plan = _data(run), _plan(run)
    implementations: dict[str, Any] = {}
    result: dict[str, Any] = {"implementations": implementations, "checks": {}}
    for name in ATTENTION_IMPLEMENTATIONS:
        try:
            require_attention(name)
            if name == "flash_attention_2" and not torch.cuda.is_available():
                raise ValueError("flash_attention_2 needs a CUDA device")
        except ValueError as missing:
            implementations[name] = {"status": "skipped", "reason": str(missing)}
            continue
        entry: dict[str, Any] = {}
        implementations[name] = entry
        try:
            entry["logits"] = checks.packed_logit_check(size=run.args.size, data=data, implementation=name,
                                                        device=run.args.device, rows=4 if run.cuda else 2)
            result["checks"][f"{name}_packed_equals_unpacked"] = {
                "passed": entry["logits"]["passed"], "value": entry["logits"]["max_abs_diff"],
                "limit": entry["logits"]["tolerance"]}
            if name == "sdpa" and run.train is not None:
                entry["train"] = {**run.train, "from": "train section"}
            elif run.args.attn_steps > 0:
                entry["train"] = checks.run_training(
                    name=f"attention_{name}", work=run.work, data=data, size=run.args.size, processes=1,
                    timeout_s=run.job_timeout_s(), threads=run.threads,
                    overrides=_train_overrides(run, plan, steps=run.args.attn_steps, attn_implementation=name))
                entry["train"]["mfu"] = _mfu(run, plan, entry["train"])
        except (RuntimeError, ValueError, ImportError) as error:  # one implementation's failure, not the section's
            entry["error"] = f"{type(error).__name__}: {error}"
            result["checks"][f"{name}_ran"] = {"passed": False, "value": entry["error"]}
        entry["status"] = "failed" if "error" in entry or not entry["logits"]["passed"] else "passed"
    return result


def fsdp_vs_ddp(run: Run) -> dict[str, Any]:
    ranks = run.devices if run.cuda else run.args.cpu_ranks
    if ranks < 2:
        raise Skipped(f"{ranks} device{'s' if ranks != 1 else ''}: FSDP vs DDP needs >= 2"
                      + ("" if run.cuda else " (--cpu-ranks 2 runs it with gloo)"))
    plan = _plan(run)
    jobs = {}
    for strategy in ("ddp", "fsdp_full"):
        jobs[strategy] = checks.run_training(
            name=f"strategy_{strategy}", work=run.work, data=_data(run), size=run.args.size, processes=ranks,
            timeout_s=run.job_timeout_s(), threads=run.threads,
            overrides={**_train_overrides(run, plan, steps=run.args.fsdp_steps, strategy=strategy),
                       "grad_accum": 1, "logging_steps": 1})
        jobs[strategy]["mfu"] = _mfu(run, plan, jobs[strategy])
    losses = {s: [loss for _, loss in j["losses"]] for s, j in jobs.items()}
    first = abs(losses["fsdp_full"][0] - losses["ddp"][0]) / abs(losses["ddp"][0])
    tail = min(5, len(losses["ddp"]))
    last = abs(sum(losses["fsdp_full"][-tail:]) - sum(losses["ddp"][-tail:])) / abs(sum(losses["ddp"][-tail:]))
    return {"ranks": ranks, "jobs": jobs, "checks": {
        # Same init and data order: the first loss differs by rounding only, later ones by its drift.
        "first_loss_agrees": {"passed": first <= 0.02, "value": first, "limit": 0.02},
        "last_losses_agree": {"passed": last <= 0.05, "value": last, "limit": 0.05}}}


def generation(run: Run) -> dict[str, Any]:
    result = checks.generation_check(device=run.args.device, builtin_size=run.args.gen_builtin_size,
                                     prompts=run.args.gen_prompts, max_new_tokens=run.args.gen_new_tokens,
                                     batch_size=64, train_steps=2 if run.args.quick else 30)
    result["checks"] = {"batched_equals_hf_generate": {"passed": result.pop("passed"), "value": result["identical"],
                                                       "limit": result["prompts"]}}
    return result


# ---- the report --------------------------------------------------------------------------------

def _num(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:,.{digits}g}" if isinstance(value, float) else str(value)


def _job_cells(job: dict[str, Any] | None) -> list[str]:
    """tokens/s, MFU, peak memory of one training job (peak RSS on CPU, which counts the interpreter)."""
    if not job:
        return ["–"] * 3
    peak = (f"{job['peak_reserved_gib']:.2f} GiB reserved" if job["peak_reserved_gib"] is not None
            else f"{job['peak_rss_gib']:.2f} GiB RSS")
    return [f"{job['tokens_per_s']:,.0f}", f"{job['mfu']:.1%}", peak]


def _headline(name: str, s: dict[str, Any]) -> str:
    if s["status"] != "passed" and "failed_checks" not in s:
        return s.get("reason") or s.get("error", "")
    if name == "environment" and "peak" not in s:
        return "torch sees no CUDA device"
    if name == "environment":
        gpus = s["info"].get("gpus")
        peak = s["peak"]["tflops_per_device"]
        peak_text = f"{peak:,.1f} TFLOP/s" if peak >= 1 else f"{peak * 1e3:,.1f} GFLOP/s"
        return (", ".join(g["name"] for g in gpus) if gpus else "CPU") + f"; peak {peak_text} ({s['peak']['source']})"
    if name == "train":
        tokens, mfu, peak = _job_cells(s["job"])
        return f"{tokens} tokens/s, MFU {mfu}, {peak} (plan {s['plan']['total_gib']} GiB)"
    if name == "attention":
        return ", ".join(f"{n}: {i['status']}" + (f" (Δ {i['logits']['max_abs_diff']:.2g})" if "logits" in i else "")
                         for n, i in s["implementations"].items())
    if name == "fsdp_vs_ddp":
        return ", ".join(f"{n} {j['tokens_per_s']:,.0f} tokens/s" for n, j in s["jobs"].items()) + \
            f"; last losses differ {s['checks']['last_losses_agree']['value']:.2%}"
    return (f"{s['identical']}/{s['prompts']} identical" + (f" (fp64 {s['identical_fp64']})" if s["identical_fp64"]
            is not None else "") + f", batched x{s['speedup']:.2f} prompts/s vs HF generate")


def summary_table(payload: dict[str, Any]) -> str:
    lines = ["| section | status | time | result |", "|---|---|---|---|"]
    lines += [f"| {name} | **{s['status']}** | {s['seconds']:.0f} s | {_headline(name, s)} |"
              for name, s in payload["sections"].items()]
    return "\n".join(lines)


def markdown(payload: dict[str, Any]) -> str:
    sections = payload["sections"]
    out = [f"# GPU acceptance: {'PASSED' if payload['passed'] else 'FAILED'}", "",
           f"{payload['date']}, commit `{payload['commit']}`, {payload['total_s']:.0f} s in all. "
           f"`{payload['command']}`", "", summary_table(payload), ""]
    out += [f"- failed: {failure}" for failure in payload["failures"]]
    train_section = sections.get("train", {})
    if "job" in train_section:
        job, plan = train_section["job"], train_section["plan"]
        out += ["", "## train", "",
                f"{payload['settings']['size']} ({job['param_count'] / 1e6:.1f} M parameters), {job['precision']}, "
                f"seq {job['seq_len']}, micro-batch {job['micro_batch']} x accumulation {job['grad_accum']}, "
                f"checkpointing {'on' if job['gradient_checkpointing'] else 'off'}, {job['steps']} steps "
                f"({job['timed_steps']} timed, {job['s_per_step']:.3f} s/step). Steady tokens/s "
                f"{job['tokens_per_s']:,.0f}; the job's own (evaluations and save included) "
                f"{job['job_tokens_per_s']:,.0f}. MFU {job['mfu']:.1%} (the plan assumes "
                f"{train_section['planned_mfu']:.0%}). Validation loss {job['val_loss_before']:.3f} → "
                f"{job['val_loss_after']:.3f}.", "",
                f"Memory: peak allocated {_num(job['peak_allocated_gib'])} GiB, reserved "
                f"{_num(job['peak_reserved_gib'])} GiB; the plan ({plan['strategy']}): **{plan['total_gib']} GiB** = "
                + ", ".join(f"{k} {v:g}" for k, v in plan["parts_gib"].items()) + "."]
    if "implementations" in sections.get("attention", {}):
        out += ["", "## attention", "", "| implementation | status | dtype | max abs Δ packed vs unpacked (tolerance) "
                "| with a KV cache (control) | tokens/s | MFU | peak |", "|---|---|---|---|---|---|---|---|"]
        for name, entry in sections["attention"]["implementations"].items():
            logits = entry.get("logits", {})
            delta = f"{logits['max_abs_diff']:.2g} ({logits['tolerance']:g})" if logits else "–"
            control = _num(logits.get("cache_control_max_abs_diff"))
            why = entry.get("reason") or entry.get("error")
            out.append(f"| {name} | {entry['status']}{': ' + why if why else ''} | {logits.get('dtype', '–')} | {delta} "
                       f"| {control} | " + " | ".join(_job_cells(entry.get("train"))) + " |")
    if "jobs" in sections.get("fsdp_vs_ddp", {}):
        out += ["", f"## fsdp_vs_ddp ({sections['fsdp_vs_ddp']['ranks']} ranks)", "",
                "| strategy | tokens/s | MFU | peak per rank | first loss | last loss |", "|---|---|---|---|---|---|"]
        out += [f"| {n} | " + " | ".join(_job_cells(j)) + f" | {j['losses'][0][1]:.4f} | {j['losses'][-1][1]:.4f} |"
                for n, j in sections["fsdp_vs_ddp"]["jobs"].items()]
    if "sides" in sections.get("generation", {}):
        gen = sections["generation"]
        out += ["", "## generation", "", f"{gen['prompts']} prompts, greedy, {gen['max_new_tokens']} new tokens, "
                f"batch {gen['batch_size']}: {gen['identical']}/{gen['prompts']} identical"
                + ("" if gen["identical_fp64"] is None else f" in fp32, {gen['identical_fp64']} in the float64 rerun"),
                "",
                "| side | s | prompts/s | new tokens | stopped |", "|---|---|---|---|---|"]
        out += [f"| {n} | {v['seconds']:.2f} | {v['prompts_per_s']:.1f} | {v['new_tokens']} | {v['stopped']} |"
                for n, v in gen["sides"].items()]
    return "\n".join(out) + "\n"


# ---- running it --------------------------------------------------------------------------------

def run_section(run: Run, name: str, body: Callable[[Run], dict[str, Any]]) -> dict[str, Any]:
    started = time.monotonic()
    needs = NEEDS_S[run.args.device].get(name, 0)
    run.section = name
    print(f"\n=== {name} ({run.left_s():.0f} s of budget left)", flush=True)
    try:
        if not run.selected(name):
            raise Skipped("not in --only")
        if run.stopped:
            raise Skipped("the run was stopped")
        if run.left_s() < needs:
            raise Skipped(f"time budget: {run.left_s():.0f} s left, the section needs ~{needs} s")
        result = body(run)
        failed = [check for check, value in result.get("checks", {}).items() if not value["passed"]]
        result["status"] = "failed" if failed else "passed"
        result["failed_checks"] = failed
    except Skipped as why:
        result = {"status": "skipped", "reason": str(why)}
    except Exception as error:  # noqa: BLE001 - a section's crash is its result; the others still run
        result = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                  "traceback": traceback.format_exc()[-4000:]}
    result["seconds"] = round(time.monotonic() - started, 1)
    print(f"=== {name}: {result['status']} in {result['seconds']:.1f} s"
          + (f" ({result.get('reason') or result.get('error') or ', '.join(result.get('failed_checks', []))})"
             if result["status"] != "passed" else ""), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = args.work_dir or _common.OUT_DIR / f"gpu_acceptance-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    run = Run(args=args, started=time.monotonic(), work=work)
    if run.threads:
        import torch

        torch.set_num_threads(run.threads)

    def stop(signum: int, _frame: Any) -> None:
        run.stopped = True  # the sections after the interrupted one are skipped
        raise Stopped(f"stopped by signal {signum} (the overall time limit?)")

    signal.signal(signal.SIGTERM, stop)
    bodies = {"environment": environment, "train": train, "attention": attention, "fsdp_vs_ddp": fsdp_vs_ddp,
              "generation": generation}
    sections: dict[str, Any] = {}
    try:
        for name in SECTIONS:
            if sections.get("environment", {}).get("status", "passed") != "passed":
                sections[name] = {"status": "skipped", "reason": "the environment section failed", "seconds": 0.0}
                continue  # no device: nothing else would mean anything
            sections[name] = run_section(run, name, bodies[name])
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    failed = [f"{name}: {check}" for name, s in sections.items() for check in s.get("failed_checks", [])]
    failed += [f"{name}: {s['error']}" for name, s in sections.items() if "error" in s]
    payload = {"benchmark": "gpu_acceptance", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
               "commit": _common.git_commit(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
               "machine": _common.machine(), "settings": {k: str(v) if isinstance(v, Path) else v
                                                          for k, v in vars(args).items()},
               "total_s": round(time.monotonic() - run.started, 1), "passed": not failed, "failures": failed,
               "sections": sections}
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out / "gpu_acceptance.json", args.out / "gpu_acceptance.md"
    json_path.write_text(json.dumps(payload, indent=2, default=str))
    md_path.write_text(markdown(payload))
    print(f"\n{summary_table(payload)}\nwrote {json_path} and {md_path}", flush=True)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
