"""The launcher resource: runs a job module under `accelerate launch` and follows it through Pipes.

Why not `PipesSubprocessClient`: it signals only its direct child, and a single-process
`accelerate launch` leaves the trainer running when the run is cancelled. Here the job gets its
own process group (local) and the whole group is killed on cancel; a Slurm job is `scancel`ed.

Messages travel through a file in the job's run directory (on the shared filesystem on a
cluster); the Pipes context through the environment. Only global rank 0 writes messages
(`exp1_assets.runtime`); a Slurm job that requeues itself opens and closes Pipes once per run,
appending to the same file. A rank that fails leaves its traceback in `errors/rank<N>.txt`, which
becomes the Dagster failure's description.

The backends, the follow loop and the failure analysis are plain Python in `exp1_assets.launch`;
this module adds the Pipes session and turns `LaunchError` into `Failure` (`launch_failure`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Optional

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

from exp1_assets.defs.config_overlay import library_default
from exp1_assets.defs.pipes_reader import RequeueTolerantMessageReader
from exp1_assets.launch.accelerate import (
    accelerate_args, cpu_threads_per_process, free_port, gpu_memory_gib, host_memory_gib, visible_gpus,
)
from exp1_assets.launch.errors import LaunchError
from exp1_assets.launch.follow import JobHandle, follow
from exp1_assets.launch.local import LocalJob
from exp1_assets.launch.sbatch import SbatchRequest, render_sbatch
from exp1_assets.launch.slurm import SlurmJob
from exp1_assets.runtime import preempted_marker
from exp1_assets.training.memory_plan import Machine


class JobLauncher(ConfigurableResource):
    """Where and how the heavy jobs run: `local` (this machine) or `slurm` (a cluster)."""

    backend: Literal["local", "slurm"] = Field(default="local", description="local (this machine) or slurm (a cluster)")
    num_processes: Optional[int] = Field(
        default=None, description="Processes per machine (unset: all visible GPUs, or 1 without CUDA)")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(default="no", description="accelerate's --mixed_precision")
    accelerate_config_file: Optional[str] = Field(default=None, description="An accelerate config file")
    extra_env: dict[str, str] = Field(default_factory=dict, description="Extra environment for jobs")
    python: Optional[str] = Field(default=None, description="Interpreter for the jobs (unset: this one)")
    stall_timeout_s: Optional[float] = Field(
        default=None, description="Fail a job that prints and reports nothing for this long (unset: never)")
    poll_interval_s: float = Field(default=0.5, description="Seconds between two looks at the job's state")
    # backend="slurm" (see exp1_assets.launch.sbatch and .slurm): one sbatch job, one `accelerate launch` per node.
    nodes: int = Field(default=1, description="slurm: nodes per job")
    gpus_per_node: int = Field(default=0, description="slurm: GPUs per node (0: CPU nodes, 1 process per node)")
    cpus_per_task: Optional[int] = Field(default=None, description="slurm: CPUs per node's launcher task (unset: Slurm's default)")
    partition: Optional[str] = Field(default=None, description="slurm: --partition")
    account: Optional[str] = Field(default=None, description="slurm: --account")
    time_limit: Optional[str] = Field(default=None, description="slurm: --time, e.g. 2-00:00:00")
    warning_lead_s: Optional[int] = Field(
        default=None,
        description="slurm: seconds before the time limit at which training saves a checkpoint and stops, to "
                    "resume in the next attempt (SIGUSR1; Slurm may send it up to 60 s earlier) "
                    f"(unset: {library_default(SbatchRequest, 'warning_lead_s')})")
    requeue: Optional[bool] = Field(
        default=None,
        description="slurm: a job stopped that way, or preempted by the cluster, is requeued and resumes under "
                    "the same job id; false: it fails with exit code 75 and the asset's retry resumes it "
                    f"(unset: {str(library_default(SbatchRequest, 'requeue')).lower()})")
    extra_sbatch_lines: list[str] = Field(default_factory=list, description="slurm: more '--option' lines")
    setup_script: Optional[str] = Field(default=None, description="slurm: shell lines run before launch (module load, venv)")
    device_memory_gib: Optional[float] = Field(
        default=None, description="Memory per device (GPU, or per CPU rank) for the memory plan "
                                  "(unset: nvidia-smi or RAM / ranks here; Slurm GPU nodes must set it to be planned)")
    shared_dir: Optional[str] = Field(
        default=None, description="slurm: where scripts, job logs and Pipes messages go (unset: the run dir)")

    def processes_per_machine(self) -> int:
        if self.num_processes is not None:
            return self.num_processes
        return visible_gpus() or 1

    def machine(self, *, num_processes: int | None = None) -> Machine | None:
        """What a job would train on, for the memory plan (None: memory unknown, e.g. Slurm GPUs unset).

        Devices are the ranks the job gets. Memory per device: `device_memory_gib` if set, else the
        local GPUs' (nvidia-smi), else, for CPU ranks, this machine's RAM shared among its ranks.
        """
        if self.backend == "slurm":
            per_node = num_processes or self.num_processes or self.gpus_per_node or 1
            devices = per_node * (1 if num_processes == 1 else self.nodes)
            kind = "gpu" if self.gpus_per_node else "cpu"
            memory = self.device_memory_gib
            if memory is None and kind == "cpu":
                memory = host_memory_gib() / per_node  # the local test cluster: nodes on this machine
        else:
            per_node = devices = num_processes or self.processes_per_machine()
            kind = "gpu" if visible_gpus() else "cpu"
            memory = self.device_memory_gib or (gpu_memory_gib() if kind == "gpu" else host_memory_gib() / devices)
        if memory is None:
            return None
        return Machine(devices=devices, device_memory_gib=memory, kind=kind)

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
        try:
            _clear_errors_of_earlier_attempts(run_dir)
            if self.backend == "slurm":
                return self._run_slurm(context, module=module, spec_path=spec_path, run_dir=run_dir,
                                       num_processes=num_processes)
            return self._run_local(context, module=module, spec_path=spec_path, run_dir=run_dir,
                                   num_processes=num_processes)
        except LaunchError as error:
            raise launch_failure(error) from error

    def _run_local(
        self,
        context: AssetExecutionContext,
        *,
        module: str,
        spec_path: Path,
        run_dir: Path,
        num_processes: int | None,
    ) -> list[PipesExecutionResult]:
        """`accelerate launch` on this machine, in its own process group."""
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
            self._follow(job, messages=messages, run_dir=run_dir)
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
        shared = Path(self.shared_dir).expanduser() if self.shared_dir is not None else run_dir
        shared.mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:8]
        messages = shared / f"pipes-{tag}.jsonl"
        partition_key = context.partition_key if context.has_partition_key else ""
        request = self.sbatch_request(
            job_name="-".join(x for x in ("exp1", module.rsplit(".", 1)[-1], partition_key) if x),
            module=module, spec_path=spec_path, log_path=shared / f"slurm-{tag}-%j.log",
            num_processes=num_processes, run_dir=run_dir,
        )
        script = render_sbatch(request)
        script_path = shared / f"slurm-{tag}.sbatch"
        script_path.write_text(script)
        with self._pipes_session(context, messages=messages) as (session, env):
            job = SlurmJob.submit(script_path=script_path, log_path_template=request.log_path, env=env)
            context.log.info(f"submitted Slurm job {job.job_id} ({request.nodes} node(s) x "
                             f"{request.processes_per_node} process(es)): {script_path}; log {job.log_path}")
            context.add_output_metadata(
                {"slurm_job_id": job.job_id, "sbatch_script": MetadataValue.md(_code(script)),
                 "slurm_log": MetadataValue.path(str(job.log_path))},
                output_name=context.assets_def.get_output_name_for_asset_key(context.asset_key),
            )
            self._follow(job, messages=messages, run_dir=run_dir)
        return list(session.get_results())

    def sbatch_request(
        self, *, job_name: str, module: str, spec_path: Path, log_path: Path, num_processes: int | None = None,
        run_dir: Path | None = None,
    ) -> SbatchRequest:
        """This launcher's Slurm settings as a request (`render_sbatch` turns it into the script).

        `run_dir` is where the ranks leave their preempted marker (without it the script does not
        act on a stop at the warning signal).
        """
        # Unset fields keep the library's defaults.
        preemption: dict[str, Any] = {k: v for k, v in (("warning_lead_s", self.warning_lead_s),
                                                        ("requeue", self.requeue)) if v is not None}
        return SbatchRequest(
            job_name=job_name, module=module, spec_path=str(spec_path), log_path=str(log_path),
            python=self.python or sys.executable,
            # A single-process job (evaluation, samples) needs one node, not the training allocation.
            nodes=1 if num_processes == 1 else self.nodes,
            processes_per_node=num_processes or self.num_processes or self.gpus_per_node or 1,
            gpus_per_node=self.gpus_per_node, cpus_per_task=self.cpus_per_task,
            partition=self.partition, account=self.account,
            time_limit=self.time_limit, extra_sbatch_lines=tuple(self.extra_sbatch_lines),
            setup_script=self.setup_script, mixed_precision=self.mixed_precision,
            accelerate_config_file=self.accelerate_config_file,
            preempted_marker=str(preempted_marker(run_dir)) if run_dir is not None else None, **preemption,
        )

    @contextlib.contextmanager
    def _pipes_session(
        self, context: AssetExecutionContext, *, messages: Path
    ) -> Iterator[tuple[PipesSession, dict[str, str]]]:
        """A Pipes session (context in the environment, messages in a file) and the job's env."""
        with open_pipes_session(
            context=context,
            context_injector=PipesEnvContextInjector(),
            message_reader=RequeueTolerantMessageReader(str(messages)),
        ) as session:
            env = {**os.environ, **self.extra_env, **session.get_bootstrap_env_vars(),
                   "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
            yield session, env

    def _follow(self, job: JobHandle, *, messages: Path, run_dir: Path) -> None:
        follow(job, messages=messages, run_dir=run_dir, stall_timeout_s=self.stall_timeout_s,
               poll_interval_s=self.poll_interval_s)


def launch_failure(error: LaunchError) -> Failure:
    """The one place a launch error becomes a Dagster `Failure`; `retryable` decides retries.

    Deterministic errors (a rank that rejected its spec, an sbatch rejection, an unknown backend)
    get `allow_retries=False`; a killed or stalled job keeps the asset's retry policy.
    """
    metadata: dict[str, MetadataValue] = {}
    for key, value in error.metadata.items():
        if key == "log_tail":
            metadata[key] = MetadataValue.md(_code(str(value)))
        elif isinstance(value, int):
            metadata[key] = MetadataValue.int(value)
        else:
            metadata[key] = MetadataValue.text(value)
    return Failure(description=error.description, metadata=metadata, allow_retries=error.retryable)


def _clear_errors_of_earlier_attempts(run_dir: Path) -> None:
    """A retry reports its own failing rank, not the one of the attempt before it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(run_dir / "errors", ignore_errors=True)


def _code(text: str) -> str:
    return "```\n" + text[-3000:].replace("```", "'''") + "\n```"


def reported_metadata(reported: list[PipesExecutionResult]) -> dict[str, Any]:
    """The metadata rank 0 reported through Pipes (`JobLauncher.run`'s results), merged in order."""
    metadata: dict[str, Any] = {}
    for item in reported:
        metadata.update(item.metadata or {})
    return metadata
