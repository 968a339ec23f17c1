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

import contextlib
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dagster import (
    AssetExecutionContext,
    ConfigurableResource,
    Failure,
    MetadataValue,
    PipesEnvContextInjector,
    PipesExecutionResult,
    PipesSession,
    open_pipes_session,
)
from pydantic import Field

from exp1_assets.defs.jobs import JobHandle, LocalJob, accelerate_args, cpu_threads_per_process, free_port
from exp1_assets.defs.pipes_reader import WholeLineFileMessageReader
from exp1_assets.defs.slurm import SbatchRequest, SlurmJob, render_sbatch


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
    # backend="slurm" (see slurm.py): one sbatch job, one `accelerate launch` per node.
    nodes: int = Field(default=1, description="slurm: nodes per job")
    gpus_per_node: int = Field(default=0, description="slurm: GPUs per node (0 = CPU, 1 process per node)")
    cpus_per_task: int = Field(default=0, description="slurm: CPUs per node's launcher task (0 = Slurm's default)")
    partition: str = Field(default="", description="slurm: --partition")
    account: str = Field(default="", description="slurm: --account")
    time_limit: str = Field(default="", description="slurm: --time, e.g. 2-00:00:00")
    extra_sbatch_lines: list[str] = Field(default_factory=list, description="slurm: more '--option' lines")
    setup_script: str = Field(default="", description="slurm: shell lines run before launch (module load, venv)")
    shared_dir: str = Field(
        default="", description="slurm: where scripts, job logs and Pipes messages go (default: the run dir)"
    )

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
        if self.backend == "slurm":
            return self._run_slurm(context, module=module, spec_path=spec_path, run_dir=run_dir,
                                   num_processes=num_processes)
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
            cpu_threads_per_process=cpu_threads_per_process(procs),
        )
        cmd = [self.python or sys.executable, "-m", "accelerate.commands.launch", *args,
               "-m", module, str(spec_path)]
        with self._pipes_session(context, messages=messages) as (session, env):
            context.log.info(f"launching {module} on {procs} process(es): {' '.join(cmd)}")
            job = LocalJob.start(cmd=cmd, env=env, log_path=run_dir / "job.log")
            self._follow(context, job=job, messages=messages, run_dir=run_dir)
        return list(session.get_results())

    def _run_slurm(
        self,
        context: AssetExecutionContext,
        *,
        module: str,
        spec_path: Path,
        run_dir: Path,
        num_processes: int | None,
    ) -> list[PipesExecutionResult]:
        """Submit an sbatch job; the job id and script go into the materialization's metadata."""
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(run_dir / "errors", ignore_errors=True)  # errors of an earlier attempt
        shared = Path(self.shared_dir).expanduser() if self.shared_dir else run_dir
        shared.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:8]
        messages = shared / f"pipes-{tag}.jsonl"
        partition_key = context.partition_key if context.has_partition_key else ""
        request = self.sbatch_request(
            job_name="-".join(x for x in ("exp1", module.rsplit(".", 1)[-1], partition_key) if x),
            module=module, spec_path=spec_path, log_path=shared / f"slurm-{tag}-%j.log",
            num_processes=num_processes,
        )
        script = render_sbatch(request)
        script_path = shared / f"slurm-{tag}.sbatch"
        script_path.write_text(script)
        with self._pipes_session(context, messages=messages) as (session, env):
            try:
                job = SlurmJob.submit(script_path=script_path, log_path_template=request.log_path, env=env)
            except RuntimeError as exc:
                raise Failure(str(exc), allow_retries=False) from exc
            context.log.info(f"submitted Slurm job {job.job_id} ({request.nodes} node(s) x "
                             f"{request.processes_per_node} process(es)): {script_path}; log {job.log_path}")
            context.add_output_metadata(
                {"slurm_job_id": job.job_id, "sbatch_script": MetadataValue.md(_code(script)),
                 "slurm_log": MetadataValue.path(str(job.log_path))},
                output_name=context.assets_def.get_output_name_for_asset_key(context.asset_key),
            )
            self._follow(context, job=job, messages=messages, run_dir=run_dir)
        return list(session.get_results())

    def sbatch_request(
        self, *, job_name: str, module: str, spec_path: Path, log_path: Path, num_processes: int | None = None
    ) -> SbatchRequest:
        """This launcher's Slurm settings as a request (`render_sbatch` turns it into the script)."""
        return SbatchRequest(
            job_name=job_name, module=module, spec_path=str(spec_path), log_path=str(log_path),
            python=self.python or sys.executable,
            # A single-process job (evaluation, samples) needs one node, not the training allocation.
            nodes=1 if num_processes == 1 else self.nodes,
            processes_per_node=num_processes or self.num_processes or self.gpus_per_node or 1,
            gpus_per_node=self.gpus_per_node, cpus_per_task=self.cpus_per_task,
            partition=self.partition, account=self.account, time_limit=self.time_limit,
            extra_sbatch_lines=tuple(self.extra_sbatch_lines), setup_script=self.setup_script,
            mixed_precision=self.mixed_precision, accelerate_config_file=self.accelerate_config_file,
        )

    @contextlib.contextmanager
    def _pipes_session(
        self, context: AssetExecutionContext, *, messages: Path
    ) -> Iterator[tuple[PipesSession, dict[str, str]]]:
        """A Pipes session (context in the environment, messages in a file) and the job's env."""
        with open_pipes_session(
            context=context,
            context_injector=PipesEnvContextInjector(),
            message_reader=WholeLineFileMessageReader(str(messages)),
        ) as session:
            env = {**os.environ, **self.extra_env, **session.get_bootstrap_env_vars(),
                   "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
            yield session, env

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
    rank_errors = sorted((run_dir / "errors").glob("rank*.txt"), key=_root_cause_first)
    tail = job.log_tail()
    headline = ""
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
    # A killed process (OOM killer, lost node, preemption) is worth a retry: it resumes from its
    # checkpoint. A job that rejected its own spec fails the same way every time: don't retry.
    deterministic = any(f": {name}:" in headline for name in DETERMINISTIC_ERRORS)
    return Failure(description=description, metadata=metadata, allow_retries=not deterministic)


# When one rank dies, its peers fail too, inside a collective ("connection closed by peer").
# Those are echoes: the root cause is the rank that failed otherwise, or else the first to fail.
_ECHO_MARKERS = ("remote worker crashing", "Connection closed by peer", "Connection reset by peer",
                 "NCCL communicator was aborted", "ProcessGroupGloo", "ProcessGroupNCCL")


def _root_cause_first(path: Path) -> tuple[bool, float, int]:
    text = path.read_text(errors="replace")[:4000]
    return (any(marker in text for marker in _ECHO_MARKERS), path.stat().st_mtime, int(path.stem[4:]))


DETERMINISTIC_ERRORS = ("ValueError", "TypeError", "KeyError", "FileNotFoundError", "NotImplementedError")


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
