#!/usr/bin/env bash
# A throw-away Slurm cluster on this machine, for tests: munged + slurmctld + N slurmd posing as
# nodes n1..nN (on 127.0.0.i). Needs root; writes nothing to /etc (node names resolve inside jobs
# through a hosts file bind-mounted in private mount/UTS namespaces).
#
#   scripts/slurm_cluster.sh up      # installs the packages if missing; prints `export SLURM_CONF=...`
#   scripts/slurm_cluster.sh down    # cancels jobs, stops the daemons by PID, removes $ROOT
#
# Settings: SLURM_TEST_ROOT (/tmp/slurm-test), SLURM_TEST_NODES (2), SLURM_TEST_CPUS (nproc),
# SLURM_TEST_PORT (6817: slurmctld; slurmd i listens on SLURM_TEST_PORT + 10000 + i).
set -euo pipefail
ROOT=${SLURM_TEST_ROOT:-/tmp/slurm-test}
NODES=${SLURM_TEST_NODES:-2}
CPUS=${SLURM_TEST_CPUS:-$(nproc)}
PORT=${SLURM_TEST_PORT:-6817}
HOST=$(hostname -s)

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
     && command -v sbatch >/dev/null && command -v munged >/dev/null; then
    return
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "slurm packages missing and cannot install them (need root and apt-get)" >&2
    exit 3
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq -o DPkg::Lock::Timeout=300
  apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 \
    slurmctld slurmd slurm-client munge >/dev/null
}

up() {
  [ "$(id -u)" = 0 ] || { echo "the test cluster needs root" >&2; exit 3; }
  install_packages
  if [ -e "$ROOT/run/slurmctld.pid" ]; then down; fi
  rm -rf "$ROOT"; mkdir -p "$ROOT"/{etc,state,log,run,munge}
  for i in $(seq 1 "$NODES"); do mkdir -p "$ROOT/spool/n$i"; done
  chmod 755 "$ROOT" "$ROOT/munge"  # munged refuses a socket dir that is not o+x
  dd if=/dev/urandom of="$ROOT/munge/munge.key" bs=1024 count=1 status=none
  chmod 600 "$ROOT/munge/munge.key"
  munged --key-file="$ROOT/munge/munge.key" --socket="$ROOT/munge/munge.socket.2" \
         --pid-file="$ROOT/munge/munged.pid" --log-file="$ROOT/munge/munged.log" \
         --seed-file="$ROOT/munge/munged.seed"

  local nodelines="" hosts="127.0.0.1 localhost
127.0.0.1 $HOST"
  for i in $(seq 1 "$NODES"); do
    nodelines+="NodeName=n$i NodeHostname=$HOST NodeAddr=127.0.0.$i Port=$((PORT + 10000 + i)) CPUs=$CPUS RealMemory=1000 State=UNKNOWN"$'\n'
    hosts+=$'\n'"127.0.0.$i n$i"
  done
  printf '%s\n' "$hosts" > "$ROOT/etc/hosts"
  cat > "$ROOT/etc/slurm.conf" <<CONF
ClusterName=testcluster
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$ROOT/munge/munge.socket.2
SlurmctldPort=$PORT
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool/%n
SlurmctldPidFile=$ROOT/run/slurmctld.pid
SlurmdPidFile=$ROOT/run/slurmd-%n.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
KillWait=5
Waittime=0
$nodelines
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  echo "export SLURM_CONF=$ROOT/etc/slurm.conf" > "$ROOT/env.sh"
  export SLURM_CONF="$ROOT/etc/slurm.conf"

  if unshare --mount --uts --propagation private true 2>/dev/null; then
    local ns="unshare --mount --uts --propagation private"
    $ns sh -c "mount --bind $ROOT/etc/hosts /etc/hosts && slurmctld -f $SLURM_CONF"
    for i in $(seq 1 "$NODES"); do
      $ns sh -c "mount --bind $ROOT/etc/hosts /etc/hosts && hostname n$i && slurmd -f $SLURM_CONF -N n$i"
    done
  else
    slurmctld -f "$SLURM_CONF"
    for i in $(seq 1 "$NODES"); do slurmd -f "$SLURM_CONF" -N "n$i"; done
  fi

  local idle=0
  for _ in $(seq 1 300); do
    idle=$(sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l)
    [ "$idle" -ge "$NODES" ] && break
    sleep 0.1
  done
  if [ "$idle" -lt "$NODES" ]; then
    echo "nodes not idle in 30 s" >&2; tail -n 20 "$ROOT"/log/*.log >&2; exit 1
  fi
  cat "$ROOT/env.sh"
}

# SIGTERM the daemon whose PID is in $1; SIGKILL it if still alive after 10 s. Never by name.
stop_pid_file() {
  local file=$1 pid
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

down() {
  if [ -e "$ROOT/etc/slurm.conf" ]; then
    export SLURM_CONF="$ROOT/etc/slurm.conf"
    local jobs
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      timeout 10 scancel --full $jobs 2>/dev/null || true
      for _ in $(seq 1 150); do
        [ -z "$(timeout 10 squeue -h -o %A 2>/dev/null || true)" ] && break
        sleep 0.1
      done
    fi
  fi
  for file in "$ROOT"/run/slurmd-*.pid; do stop_pid_file "$file"; done
  stop_pid_file "$ROOT/run/slurmctld.pid"
  stop_pid_file "$ROOT/munge/munged.pid"
  rm -rf "$ROOT"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
