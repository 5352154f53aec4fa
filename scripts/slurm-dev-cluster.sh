#!/usr/bin/env bash
# A single-node Slurm cluster (munged, slurmctld, slurmd on 127.0.0.1) for development and tests.
#   bash scripts/slurm-dev-cluster.sh up|down|status [ROOT]
# ROOT holds the config, state, logs and sockets; default $ZRL_SLURM_ROOT, else /run/zrl-slurm.
# `up` must run as root on a Debian-like machine; it installs the packages with apt when they are missing,
# waits until the node is idle and prints the `export SLURM_CONF=...` line every Slurm client needs.
# `down` cancels every job and stops the three daemons by pid. Both are idempotent.
# Run as root, this script trusts what it finds under ROOT (it kills the pids in its pid files), so ROOT and every
# directory above it must belong to root or the caller and be writable by no one else; it refuses any other ROOT.
set -euo pipefail

ACTION=${1:-}
ROOT=${2:-${ZRL_SLURM_ROOT:-/run/zrl-slurm}}

SCRIPT_NAME=slurm-dev-cluster
ROOT_VARIABLE=ZRL_SLURM_ROOT
# shellcheck source=scripts/slurm-cluster-common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/slurm-cluster-common.sh"

node_state() { timeout 5 sinfo -h -o %T 2>/dev/null | head -n1 || true; }

write_conf() {
  local mem_mb cpus
  mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
  mem_mb=$((mem_mb > 2048 ? mem_mb - 1024 : mem_mb))
  cpus=$(nproc)
  # config_overrides lets the node claim more CPUs than it has, so jobs of several tasks start on small machines.
  cpus=$((cpus < 8 ? 8 : cpus))
  {
    common_slurm_conf
    cat <<EOF
ClusterName=zrldev
SlurmctldHost=localhost
SelectTypeParameters=CR_Core
SlurmdSpoolDir=$ROOT/spool
SlurmdPidFile=$ROOT/run/slurmd.pid
SlurmdLogFile=$ROOT/log/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
  } >"$CONF"
}


up() {
  [ "$(id -u)" -eq 0 ] || die "'up' needs root (it starts munged as the munge user and slurmd as root)"
  make_root
  install_packages "slurmctld slurmd sinfo munged" slurmctld slurmd slurm-client munge
  mkdir -p "$ROOT"/{etc,state,spool,log,run,munge}
  if [ -z "$(live_pid "$ROOT/run/slurmctld.pid")" ]; then
    write_conf
  fi
  start_munge
  if [ -z "$(live_pid "$ROOT/run/slurmctld.pid")" ]; then
    slurmctld -c -f "$CONF"
  fi
  if [ -z "$(live_pid "$ROOT/run/slurmd.pid")" ]; then
    slurmd -f "$CONF" -N localhost
  fi
  local state=""
  for _ in $(seq 150); do
    state=$(node_state)
    [[ $state == idle* || $state == mix* || $state == alloc* ]] && break
    sleep 0.2
  done
  [[ $state == idle* || $state == mix* || $state == alloc* ]] ||
    die "node did not become idle within 30 s (state '${state}'); see $ROOT/log/slurmctld.log and slurmd.log"
  say "up (node $state)"
  echo "export SLURM_CONF=$CONF"
}

stop_pid_file() {
  local file=$1 pid
  pid=$(live_pid "$file")
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

down() {
  existing_root || { say "no cluster under $ROOT"; return 0; }
  if [ -n "$(live_pid "$ROOT/run/slurmctld.pid")" ]; then
    timeout 10 scancel --user="$(id -un)" 2>/dev/null || true
    # Give running jobs KillWait (5 s) plus a margin to end before slurmd goes away.
    for _ in $(seq 40); do
      [ -z "$(timeout 5 squeue -h -t pending,running,completing,configuring -o %i 2>/dev/null)" ] && break
      sleep 0.25
    done
  fi
  stop_pid_file "$ROOT/run/slurmd.pid"
  stop_pid_file "$ROOT/run/slurmctld.pid"
  stop_pid_file "$ROOT/munge/munged.pid"
  say "down"
}

status() {
  local rc=0
  existing_root || { echo "no cluster under $ROOT"; return 1; }
  daemon_states munged:$ROOT/munge/munged.pid slurmctld:$ROOT/run/slurmctld.pid slurmd:$ROOT/run/slurmd.pid || rc=1
  if [ $rc -eq 0 ]; then
    echo "node: $(node_state)"
    echo "export SLURM_CONF=$CONF"
  fi
  return $rc
}

case "$ACTION" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) die "usage: $0 up|down|status [ROOT]" ;;
esac
