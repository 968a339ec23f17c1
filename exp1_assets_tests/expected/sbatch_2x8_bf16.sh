#!/bin/bash
#SBATCH --job-name=exp1-train-1B
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --partition=gpu
#SBATCH --account=exp1
#SBATCH --time=2-00:00:00
#SBATCH --signal=USR1@300
#SBATCH --requeue
#SBATCH --output=/shared/exp1/runs/model_checkpoint/1B/0123abcd/slurm-tag-%j.log
#SBATCH --open-mode=append
#SBATCH --export=ALL
#SBATCH --mem=0
#SBATCH --exclusive
# Written by exp1_assets (JobLauncher backend=slurm); the environment comes from sbatch.
set -eo pipefail  # no -u: module/venv activation scripts often read unset variables

# setup_script
module load cuda/12.4
source /shared/venvs/exp1/bin/activate

# Rendezvous on the first node: its name if it resolves here, else its NodeAddr.
MAIN_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)
if ! getent hosts "$MAIN_HOST" >/dev/null; then
  MAIN_HOST=$(scontrol show node "$MAIN_HOST" -o | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p')
fi
MAIN_PORT=$(python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
export MAIN_HOST MAIN_PORT
echo "exp1: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST, rendezvous $MAIN_HOST:$MAIN_PORT" >&2

# 300 s before the time limit Slurm sends SIGUSR1 to every process of the step:
# the launcher and torchrun's agent ignore it (trap), the training ranks save a checkpoint,
# stop and leave this file; the job then resumes from that checkpoint.
PREEMPTED=/shared/exp1/runs/model_checkpoint/1B/0123abcd/preempted.txt
rm -f "$PREEMPTED"  # an earlier run's; this run's ranks leave their own
status=0
# --kill-on-bad-exit: a failed node stops the others instead of leaving them in a collective.
srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 --cpus-per-task=64 --gpus-per-node=8 \
  bash -c 'trap "" USR1; THREADS=$(( $(nproc) / 8 )); [ "$THREADS" -ge 1 ] || THREADS=1; exec python -m accelerate.commands.launch --num_cpu_threads_per_process "$THREADS" --num_processes 16 --num_machines "$SLURM_NNODES" --machine_rank "$SLURM_NODEID" --main_process_ip "$MAIN_HOST" --main_process_port "$MAIN_PORT" --mixed_precision bf16 --dynamo_backend no --multi_gpu --rdzv_backend static --same_network -m exp1_assets.training.train /shared/exp1/runs/model_checkpoint/1B/0123abcd/spec.json' || status=$?
if [ "$status" -ne 0 ] && [ -e "$PREEMPTED" ]; then
  echo "exp1: job $SLURM_JOB_ID $(cat "$PREEMPTED"); requeueing it to resume there" >&2
  scontrol requeue "$SLURM_JOB_ID" && exit 0
  echo "exp1: requeue refused; exit 75 (preempted): a retry resumes there" >&2
  exit 75
fi
exit "$status"
