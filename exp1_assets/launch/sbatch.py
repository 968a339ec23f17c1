"""The Slurm batch script: one `accelerate launch` per node, rendered from a frozen `SbatchRequest`.

The launcher writes the script that `render_sbatch` returns and submits it; `launch/slurm.py`
follows the job.

Nothing secret is ever written to the script: the Dagster Pipes context, `extra_env` and the
caller's environment reach the job through sbatch's `--export=ALL`.

Time limits and preemption: `--signal=USR1@<warning_lead_s>` makes Slurm send SIGUSR1 to every
process of the job's step that long before the time limit (Slurm's manual: up to 60 s earlier;
seen on the test cluster: at the first tick of slurmctld's 30 s timer from 30 s before that), and
at preemption where the cluster sets `PreemptParameters=send_user_signal`. Not `B:`: that signals
the batch shell alone, whose trap runs only once srun returns (unless srun is put in the
background) and could only forward the signal to the same step processes. `accelerate launch`
and torchrun's agent die of an unhandled SIGUSR1 (seen: the agents gone, their ranks orphaned),
so the node command ignores it before exec'ing them: an ignored signal stays ignored across exec,
and the training ranks install their own handler (training/preemption.py). They save a
checkpoint at the same step, stop, leave `runtime.preempted_marker(run_dir)` and exit non-zero.
The script then requeues the job (`scontrol requeue`: same job id, same log; Slurm runs it again
>= 121 s later, and it resumes from that checkpoint) or, with requeue off or refused, exits with
`PREEMPTED_EXIT_CODE` for the launcher's retry. `SlurmJob` follows a requeued job through PENDING
back to RUNNING as one job.
"""

from __future__ import annotations

import dataclasses
import re
import shlex

from exp1_assets.launch.accelerate import MIXED_PRECISIONS, MixedPrecision, accelerate_args
from exp1_assets.runtime import PREEMPTED_EXIT_CODE, PREEMPTION_SIGNAL

_TIME_LIMIT = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # minutes, H:M:S, D-H, D-H:M:S, ...


@dataclasses.dataclass(frozen=True)
class SbatchRequest:
    """Everything the sbatch script says: resources, setup and the per-node launch command."""

    job_name: str
    """sbatch --job-name."""
    module: str
    """The job module each rank runs (`python -m module spec_path`)."""
    spec_path: str
    """The job's spec file on the shared filesystem."""
    log_path: str
    """The job's log on the shared filesystem; may contain %j (the job id)."""
    python: str = "python"
    """The interpreter on the nodes."""
    nodes: int = 1
    """Nodes per job; one `accelerate launch` per node."""
    processes_per_node: int = 1
    """Ranks per node (GPUs per node on a GPU cluster)."""
    gpus_per_node: int = 0
    """GPUs requested per node; 0 = a CPU job."""
    cpus_per_task: int | None = None
    """CPUs for each node's launcher task; None = the partition's default."""
    partition: str | None = None
    """sbatch --partition; None = the cluster's default."""
    account: str | None = None
    """sbatch --account; None = the user's default."""
    time_limit: str | None = None
    """sbatch --time (90, 12:00:00, 2-00:00:00); None = the partition's limit."""
    extra_sbatch_lines: tuple[str, ...] = ()
    """More '--option' or '#SBATCH --option' lines, one option each."""
    setup_script: str | None = None
    """Shell lines run on the batch host before the launch (module load, venv activation)."""
    mixed_precision: MixedPrecision = "no"
    """accelerate's --mixed_precision."""
    accelerate_config_file: str | None = None
    """An accelerate config file passed to every node's launch."""
    warning_lead_s: int | None = 300
    """Seconds before the time limit at which the ranks get SIGUSR1 and stop at a checkpoint (sbatch
    --signal; Slurm may send it up to 60 s earlier); None = no warning. The default leaves a large
    model's checkpoint time to reach a parallel filesystem."""
    requeue: bool = True
    """sbatch --requeue, and after a stop at the warning the job requeues itself (same job id) to
    resume; False = --no-requeue, and the job exits with PREEMPTED_EXIT_CODE for the launcher's retry."""
    preempted_marker: str | None = None
    """The file the ranks leave after such a stop (`runtime.preempted_marker(run_dir)`); None = the
    script does not look for one, and a stop ends the job like a crash (a retry still resumes)."""

    def __post_init__(self) -> None:
        for name in ("job_name", "module", "spec_path", "log_path", "python"):
            if not getattr(self, name).strip():
                raise ValueError(f"{name}: must not be empty")
        for name, minimum in (("nodes", 1), ("processes_per_node", 1), ("gpus_per_node", 0),
                              ("cpus_per_task", 1)):
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise ValueError(f"{name}: {value} is below {minimum}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision: {self.mixed_precision!r} is not one of {MIXED_PRECISIONS}")
        if self.time_limit is not None and not _TIME_LIMIT.match(self.time_limit):
            raise ValueError(f"time_limit: {self.time_limit!r} is not a Slurm time (e.g. 90, 12:00:00, 2-00:00:00)")
        if self.warning_lead_s is not None:
            if not 1 <= self.warning_lead_s <= 65535:  # sbatch's range for the signal time
                raise ValueError(f"warning_lead_s: {self.warning_lead_s} is not between 1 and 65535 seconds")
            if self.time_limit is not None and self.warning_lead_s >= time_limit_s(self.time_limit):
                raise ValueError(f"warning_lead_s: {self.warning_lead_s} s is not shorter than time_limit "
                                 f"{self.time_limit!r} ({time_limit_s(self.time_limit)} s)")
        if self.preempted_marker is not None and not self.preempted_marker.strip():
            raise ValueError("preempted_marker: must not be empty (None: no marker)")
        for line in self.extra_sbatch_lines:
            if "\n" in line or not line.strip().startswith(("#SBATCH", "--")):
                raise ValueError(f"extra_sbatch_lines: {line!r} is not one '--option' or '#SBATCH --option' line")

    @property
    def num_processes(self) -> int:
        return self.nodes * self.processes_per_node

    @property
    def handles_preemption(self) -> bool:
        """Whether the script asks for the warning and acts on the ranks' stop."""
        return self.warning_lead_s is not None and self.preempted_marker is not None


def time_limit_s(text: str) -> int:
    """Seconds in a Slurm time: minutes, M:S, H:M:S, D-H, D-H:M or D-H:M:S (sbatch --time).

    >>> [time_limit_s(t) for t in ("90", "1:30", "12:00:00", "1-2", "1-2:30", "2-00:00:00")]
    [5400, 90, 43200, 93600, 95400, 172800]
    """
    if not _TIME_LIMIT.match(text):
        raise ValueError(f"time_limit: {text!r} is not a Slurm time (e.g. 90, 12:00:00, 2-00:00:00)")
    days, _, clock = text.rpartition("-")
    parts = [int(x) for x in clock.split(":")]
    if days:  # after "D-" the clock starts with hours
        hours, minutes, seconds = (parts + [0, 0])[:3]
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if len(parts) == 3:
        return (parts[0] * 60 + parts[1]) * 60 + parts[2]
    return parts[0] * 60 + (parts[1] if len(parts) == 2 else 0)  # minutes[:seconds]


def render_sbatch(request: SbatchRequest) -> str:
    """The batch script: #SBATCH header, setup lines, then `srun` = one `accelerate launch` per node.

    >>> script = render_sbatch(SbatchRequest(job_name="exp1-train", module="m", spec_path="/s/spec.json",
    ...                                      log_path="/s/slurm-%j.log", nodes=2))
    >>> "#SBATCH --nodes=2" in script and "--machine_rank \\"$SLURM_NODEID\\"" in script
    True
    """
    r = request
    header = [
        f"--job-name={r.job_name}",
        f"--nodes={r.nodes}",
        "--ntasks-per-node=1",  # one launcher per node; accelerate starts the per-GPU ranks
        f"--gpus-per-node={r.gpus_per_node}" if r.gpus_per_node else "",
        f"--cpus-per-task={r.cpus_per_task}" if r.cpus_per_task else "",
        f"--partition={r.partition}" if r.partition else "",
        f"--account={r.account}" if r.account else "",
        f"--time={r.time_limit}" if r.time_limit else "",
        f"--signal={PREEMPTION_SIGNAL}@{r.warning_lead_s}" if r.handles_preemption else "",
        "--requeue" if r.requeue else "--no-requeue",
        f"--output={r.log_path}",  # stdout and stderr of every node, in one file on the shared fs
        "--open-mode=append",
        "--export=ALL",  # the Pipes context and secrets travel in the environment, not in this file
    ]
    lines = ["#!/bin/bash"] + [f"#SBATCH {h}" for h in header if h]
    lines += [x.strip() if x.strip().startswith("#SBATCH") else f"#SBATCH {x.strip()}" for x in r.extra_sbatch_lines]
    lines += ["# Written by exp1_assets (JobLauncher backend=slurm); the environment comes from sbatch.",
              "set -eo pipefail  # no -u: module/venv activation scripts often read unset variables", ""]
    if r.setup_script is not None and r.setup_script.strip():
        lines += ["# setup_script", *r.setup_script.strip().splitlines(), ""]
    lines += [
        "# Rendezvous on the first node: its name if it resolves here, else its NodeAddr.",
        'MAIN_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)',
        'if ! getent hosts "$MAIN_HOST" >/dev/null; then',
        '  MAIN_HOST=$(scontrol show node "$MAIN_HOST" -o | sed -n \'s/.*NodeAddr=\\([^ ]*\\).*/\\1/p\')',
        "fi",
        f"MAIN_PORT=$({shlex.quote(r.python)} -c {shlex.quote(_FREE_PORT_CODE)})",
        "export MAIN_HOST MAIN_PORT",
        'echo "exp1: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST, '
        'rendezvous $MAIN_HOST:$MAIN_PORT" >&2',
        "",
    ]
    srun = [
        "# --kill-on-bad-exit: a failed node stops the others instead of leaving them in a collective.",
        f"srun {' '.join(_srun_flags(r))} \\",
        f"  bash -c {shlex.quote(_node_command(r))}",
    ]
    if not r.handles_preemption:
        return "\n".join(lines + srun + [""])
    assert r.preempted_marker is not None  # handles_preemption
    lines += [
        f"# {r.warning_lead_s} s before the time limit Slurm sends SIG{PREEMPTION_SIGNAL} to every process "
        "of the step:",
        "# the launcher and torchrun's agent ignore it (trap), the training ranks save a checkpoint,",
        "# stop and leave this file; the job then resumes from that checkpoint.",
        f"PREEMPTED={shlex.quote(r.preempted_marker)}",
        'rm -f "$PREEMPTED"  # an earlier run\'s; this run\'s ranks leave their own',
        "status=0",
    ]
    srun[-1] += " || status=$?"
    lines += srun
    lines += ['if [ "$status" -ne 0 ] && [ -e "$PREEMPTED" ]; then']
    if r.requeue:
        lines += [
            '  echo "exp1: job $SLURM_JOB_ID $(cat "$PREEMPTED"); requeueing it to resume there" >&2',
            '  scontrol requeue "$SLURM_JOB_ID" && exit 0',
            f'  echo "exp1: requeue refused; exit {PREEMPTED_EXIT_CODE} (preempted): a retry resumes there" >&2',
        ]
    else:
        lines += [f'  echo "exp1: job $SLURM_JOB_ID $(cat "$PREEMPTED"); exit {PREEMPTED_EXIT_CODE} (preempted): '
                  'a retry resumes there" >&2']
    lines += [f"  exit {PREEMPTED_EXIT_CODE}", "fi", 'exit "$status"', ""]
    return "\n".join(lines)


_FREE_PORT_CODE = 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'


def _srun_flags(r: SbatchRequest) -> list[str]:
    # Slurm 22.05 steps do not inherit --cpus-per-task / GPUs from the batch job: repeat them.
    flags = ['--nodes="$SLURM_NNODES"', "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    if r.cpus_per_task:
        flags.append(f"--cpus-per-task={r.cpus_per_task}")
    if r.gpus_per_node:
        flags.append(f"--gpus-per-node={r.gpus_per_node}")
    return flags


def _node_command(r: SbatchRequest) -> str:
    """What each node runs: `accelerate launch` with this node's rank (expanded on the node)."""
    args = accelerate_args(
        num_processes=r.num_processes,
        num_machines=r.nodes,
        machine_rank="$SLURM_NODEID",
        main_process_ip="$MAIN_HOST",
        main_process_port="$MAIN_PORT",
        mixed_precision=r.mixed_precision,
        config_file=r.accelerate_config_file,
        cpu_threads_per_process="$THREADS",
    )
    args[args.index("--num_machines") + 1] = "$SLURM_NNODES"  # = nodes: sbatch got exactly that many
    cmd = [r.python, "-m", "accelerate.commands.launch", *args, "-m", r.module, r.spec_path]
    # The node's allotted cores (nproc follows Slurm's affinity) shared among its ranks.
    per_node = max(1, r.processes_per_node)
    threads = f"THREADS=$(( $(nproc) / {per_node} )); [ \"$THREADS\" -ge 1 ] || THREADS=1; "
    # Ignored before exec: the launcher and torchrun's agent inherit it (unhandled, it kills them);
    # the ranks inherit it too, until they install their own handler.
    ignore = f'trap "" {PREEMPTION_SIGNAL}; ' if r.handles_preemption else ""
    quoted = " ".join(f'"{a}"' if re.fullmatch(r"\$[A-Z_]+", a) else shlex.quote(a) for a in cmd)
    return ignore + threads + "exec " + quoted
