"""The launcher resource: runs a job module under `accelerate launch` and follows it through Pipes.

Why not `PipesSubprocessClient`: it signals only its direct child, and a single-process
`accelerate launch` leaves the trainer running when the run is cancelled. Here the job gets its
own process group (local) and the whole group is killed on cancel; a Slurm job is `scancel`ed.

Messages travel through a file in the job's run directory (on the shared filesystem on a
cluster); the Pipes context through the environment. Only global rank 0 writes messages
(`exp1_assets.runtime`). A rank that fails leaves its traceback in `errors/rank<N>.txt`, which
becomes the Dagster failure's description.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from dagster import (
    AssetExecutionContext,
    ConfigurableResource,
    Failure,
    MetadataValue,
    PipesEnvContextInjector,
    PipesExecutionResult,
    PipesFileMessageReader,
    open_pipes_session,
)
from pydantic import Field

from exp1_assets.defs.jobs import JobHandle, LocalJob, accelerate_args, free_port


class JobLauncher(ConfigurableResource):
    """Where and how the heavy jobs run: `local` (this machine) or `slurm` (a cluster)."""

    backend: str = Field(default="local", description="'local' or 'slurm'")
    num_processes: int = Field(
        default=0, description="Processes per machine; 0 = all visible GPUs, or 1 without CUDA"
    )
    mixed_precision: str = Field(default="no", description="accelerate's --mixed_precision")
    accelerate_config_file: str = Field(default="", description="Optional accelerate config file")
    extra_env: dict[str, str] = Field(default_factory=dict, description="Extra environment for jobs")
    python: str = Field(default="", description="Interpreter for the jobs; empty = this one")
    stall_timeout_s: float = Field(
        default=0.0, description="Fail a job that prints and reports nothing for this long (0 = off)"
    )
    poll_interval_s: float = 0.5

    def processes_per_machine(self) -> int:
        if self.num_processes > 0:
            return self.num_processes
        return visible_gpus() or 1

    def run(
        self,
        context: AssetExecutionContext,
        *,
        module: str,
        spec_path: Path,
        run_dir: Path,
        num_processes: int | None = None,
    ) -> list[PipesExecutionResult]:
        """Launch `python -m module spec_path` and return what rank 0 reported through Pipes."""
        if self.backend != "local":
            raise Failure(f"JobLauncher.backend={self.backend!r} is not available", allow_retries=False)
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(run_dir / "errors", ignore_errors=True)  # errors of an earlier attempt
        messages = run_dir / f"pipes-{uuid.uuid4().hex[:8]}.jsonl"
        procs = num_processes or self.processes_per_machine()
        args = accelerate_args(
            num_processes=procs,
            num_machines=1,
            machine_rank="0",
            main_process_ip="127.0.0.1",
            main_process_port=str(free_port()),
            mixed_precision=self.mixed_precision,
            config_file=self.accelerate_config_file,
        )
        cmd = [self.python or sys.executable, "-m", "accelerate.commands.launch", *args,
               "-m", module, str(spec_path)]
        with open_pipes_session(
            context=context,
            context_injector=PipesEnvContextInjector(),
            message_reader=PipesFileMessageReader(str(messages)),
        ) as session:
            env = {**os.environ, **self.extra_env, **session.get_bootstrap_env_vars(),
                   "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
            context.log.info(f"launching {module} on {procs} process(es): {' '.join(cmd)}")
            job = LocalJob.start(cmd=cmd, env=env, log_path=run_dir / "job.log")
            self._follow(context, job=job, messages=messages, run_dir=run_dir)
        return list(session.get_results())

    def _follow(
        self, context: AssetExecutionContext, *, job: JobHandle, messages: Path, run_dir: Path
    ) -> None:
        """Wait for the job; kill it on cancel or stall; turn a failure into a precise Failure."""
        try:
            while (code := job.poll()) is None:
                if self.stall_timeout_s > 0:
                    idle = time.time() - max(job.last_output_time(), _mtime(messages))
                    if idle > self.stall_timeout_s:
                        job.cancel()
                        raise Failure(
                            f"{job.describe()} made no progress for {idle:.0f} s "
                            f"(stall_timeout_s={self.stall_timeout_s:g}); it was stopped",
                            metadata={"log_tail": MetadataValue.md(_code(job.log_tail()))},
                        )
                time.sleep(self.poll_interval_s)
        except BaseException:
            # Run terminated from the UI, SIGINT to the CLI, or the stall above: no orphans.
            job.cancel()
            raise
        if code != 0:
            raise job_failure(job=job, code=code, run_dir=run_dir)


def job_failure(*, job: JobHandle, code: int, run_dir: Path) -> Failure:
    """The real error: the first failing rank's traceback, else the tail of the job's log."""
    rank_errors = sorted((run_dir / "errors").glob("rank*.txt"), key=lambda p: int(p.stem[4:]))
    tail = job.log_tail()
    if rank_errors:
        first = rank_errors[0].read_text(errors="replace")
        headline = first.splitlines()[0] if first else rank_errors[0].name
        description = f"{job.describe()} failed (exit code {code}) — {headline}\n\n{first[-4000:]}"
    else:
        description = f"{job.describe()} failed (exit code {code}); last output:\n{tail[-4000:]}"
    metadata: dict[str, Any] = {
        "exit_code": code,
        "failed_ranks": MetadataValue.text(", ".join(p.stem for p in rank_errors) or "unknown"),
        "log_tail": MetadataValue.md(_code(tail)),
    }
    return Failure(description=description, metadata=metadata)


def visible_gpus() -> int:
    """CUDA devices the jobs would see, without importing torch in the code server."""
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    if devices is not None:
        return len([d for d in devices.split(",") if d.strip() and d.strip() != "-1"])
    return len(list(Path("/dev").glob("nvidia[0-9]*")))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _code(text: str) -> str:
    return "```\n" + text[-3000:].replace("```", "'''") + "\n```"
