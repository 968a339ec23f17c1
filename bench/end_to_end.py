"""End to end: the README's main command from a clean EXP1_HOME / DAGSTER_HOME, timed per asset.

    dagster asset materialize -m exp1_assets.definitions --select '*' --partition tiny

Reads the run's event log through `DagsterInstance`: wall time per asset step (STEP_START ->
STEP_SUCCESS/FAILURE), and the time inside the launched jobs:
  - job process time: the launcher's "launching <module>" log line -> the last write to the
    job's `job.log` (python + accelerate startup, imports, the work itself, saving);
  - in-job time: `train_result.json` `wall_time_s` (the training job's own clock from its start).
Orchestration overhead = run wall time - job process time (everything Dagster and the data
assets' in-process work cost around the jobs) — reported both with and without the in-process
data assets, which are real work, not overhead. Targets: <= 10 min total, overhead <= 15%.

`--quick` runs the test suite's scaled-down config (`exp1_assets_tests.run_configs.fast_run_config`:
seconds of training) instead of the default. The suite's CLI test runs it with `--keep` and reads
that one run's instance, so the README's command and this benchmark are tested by the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import yaml
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

LAUNCHED = {"model_checkpoint": "model_checkpoint", "evaluation_report": "evaluation_report",
            "sample_set": "sample_set", "benchmark_report": "benchmark_report"}  # step key -> artifact name under runs/


def step_times(instance, run_id: str) -> tuple[dict[str, dict[str, float]], list[tuple[float, str]]]:
    """{step_key: {start, end, seconds, status}} and the (timestamp, message) log lines."""
    steps: dict[str, dict[str, float]] = {}
    messages = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            messages.append((entry.timestamp, entry.user_message or ""))
            continue
        kind = event.event_type_value
        if kind == "STEP_START":
            steps.setdefault(entry.step_key, {})["start"] = entry.timestamp
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE"):
            record = steps.setdefault(entry.step_key, {})
            record["end"], record["status"] = entry.timestamp, kind
            record["seconds"] = record["end"] - record.get("start", record["end"])
    return steps, messages


def job_process_seconds(*, exp1_home: Path, step_key: str, step: dict, messages) -> float | None:
    """From the step's 'launching' log line to the job's end: the last change in its run dir.

    The launcher deletes the job's Pipes message file when the job's session closes, which
    touches the run dir; job.log alone can stop changing long before the job ends.
    """
    launched = [t for t, m in messages if m.startswith("launching") and step.get("start", 0) <= t <= step.get("end", 0)]
    logs = list((exp1_home / "runs" / LAUNCHED[step_key]).rglob("job.log"))
    if not launched or not logs:
        return None
    ends = [p.stat().st_mtime for p in logs] + [p.parent.stat().st_mtime for p in logs]
    return max(t for t in ends if t <= step.get("end", float("inf")) + 1) - launched[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partition", default="tiny")
    parser.add_argument("--quick", action="store_true", help="the tests' scaled-down config (about a minute)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary homes under bench/out/")
    parser.add_argument("--analyze", type=Path, default=None,
                        help="re-read a kept bench/out/e2e-* dir instead of running (no new run)")
    args = parser.parse_args(argv)

    if args.analyze:
        work = args.analyze.resolve()
        exp1_home, dagster_home = work / "exp1_home", work / "dagster_home"
        cli_log = (work / "cli_seconds.txt")
        return report(args, work=work, exp1_home=exp1_home, dagster_home=dagster_home,
                      cli_seconds=float(cli_log.read_text()) if cli_log.is_file() else float("nan"),
                      returncode=0, started=time.time())
    work = _common.OUT_DIR / f"e2e-{time.strftime('%Y%m%d-%H%M%S')}"
    exp1_home, dagster_home = work / "exp1_home", work / "dagster_home"
    exp1_home.mkdir(parents=True)
    dagster_home.mkdir(parents=True)
    shutil.copy(_common.REPO / "scripts" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {**os.environ, "EXP1_HOME": str(exp1_home), "DAGSTER_HOME": str(dagster_home),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    dagster = Path(sys.executable).with_name("dagster")
    cmd = [str(dagster), "asset", "materialize", "-m", "exp1_assets.definitions", "--select", "*",
           "--partition", args.partition]
    # The README's command (`make run`) runs every step in one process (scripts/run_local.yaml).
    run_local = yaml.safe_load((_common.REPO / "scripts" / "run_local.yaml").read_text())
    if args.quick:
        from exp1_assets_tests.run_configs import fast_run_config

        run_local = {**run_local, **fast_run_config()}
    cmd += ["--config-json", json.dumps(run_local)]
    print("running:", " ".join(cmd[:9]), "(quick config)" if args.quick else "", flush=True)
    started = time.time()
    proc = subprocess.run(cmd, cwd=_common.REPO, env=env, capture_output=True, text=True)
    cli_seconds = time.time() - started
    (work / "cli.log").write_text(proc.stdout + proc.stderr)
    (work / "cli_seconds.txt").write_text(str(cli_seconds))
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        print(f"dagster exited {proc.returncode}; log: {work / 'cli.log'}", file=sys.stderr)
    return report(args, work=work, exp1_home=exp1_home, dagster_home=dagster_home, cli_seconds=cli_seconds,
                  returncode=proc.returncode, started=started)


def report(args, *, work: Path, exp1_home: Path, dagster_home: Path, cli_seconds: float, returncode: int,
           started: float) -> int:
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    from dagster import DagsterInstance

    with DagsterInstance.get() as instance:
        runs = instance.get_runs()
        if not runs:
            print("no run recorded", file=sys.stderr)
            return 1
        run = runs[0]
        stats = instance.get_run_stats(run.run_id)
        steps, messages = step_times(instance, run.run_id)
    run_seconds = (stats.end_time or time.time()) - (stats.start_time or started)

    rows = []
    for key, step in sorted(steps.items(), key=lambda kv: kv[1].get("start", 0)):
        job = job_process_seconds(exp1_home=exp1_home, step_key=key, step=step, messages=messages) \
            if key in LAUNCHED else None
        rows.append({"asset": key, "seconds": step.get("seconds", float("nan")),
                     "status": step.get("status", "?"), "job_process_s": job})
    train_result = next(iter(exp1_home.glob(f"model_checkpoint/{args.partition}/train_result.json")), None)
    in_job_train = json.loads(train_result.read_text())["wall_time_s"] if train_result else None
    job_total = sum(r["job_process_s"] or 0.0 for r in rows)
    data_steps = sum(r["seconds"] for r in rows if r["asset"] not in LAUNCHED and r["asset"] != "size_comparison")
    overhead = run_seconds - job_total
    result = {
        "returncode": returncode, "run_id": run.run_id, "status": str(run.status),
        "cli_wall_s": cli_seconds, "run_wall_s": run_seconds, "steps": rows,
        "launched_job_process_s": job_total, "train_result_wall_time_s": in_job_train,
        "overhead_s": overhead, "overhead_fraction": overhead / run_seconds,
        "overhead_excluding_data_assets_s": overhead - data_steps,
        "overhead_excluding_data_assets_fraction": (overhead - data_steps) / run_seconds,
        "cli_startup_and_teardown_s": cli_seconds - run_seconds,
        "targets": {"total_s": 600, "overhead_fraction": 0.15},
        "meets_target": cli_seconds <= 600 and overhead / run_seconds <= 0.15,
        "homes": str(work) if (args.keep or args.analyze) else None,
    }
    print()
    _common.print_table(rows, ["asset", "status", "seconds", "job_process_s"])
    print(f"\nCLI wall {cli_seconds:.1f}s (target <= 600), run wall {run_seconds:.1f}s, launched jobs "
          f"{job_total:.1f}s (train_result wall_time_s {in_job_train}), overhead {overhead:.1f}s = "
          f"{overhead / run_seconds:.1%} of the run (target <= 15%); without the in-process data assets "
          f"{overhead - data_steps:.1f}s = {(overhead - data_steps) / run_seconds:.1%}")
    print(f"wrote {_common.write_result('end_to_end' + ('_quick' if args.quick else ''), result)}")
    if not args.keep and not args.analyze:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
