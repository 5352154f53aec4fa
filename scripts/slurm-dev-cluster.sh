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

die() { echo "slurm-dev-cluster: $*" >&2; exit 1; }
say() { echo "slurm-dev-cluster: $*" >&2; }

# Resolve ROOT (symlinks included) and check that no other user can change it: every directory from ROOT up to /
# belongs to root or the caller and is writable by no one else (a sticky directory such as /tmp may be, above
# ROOT). A ROOT another user created, or a link they planted, is refused rather than followed.
secure_root() {
  local dir uid mode me
  me=$(id -u)
  ROOT=$(realpath -e -- "$ROOT") || die "cannot resolve $ROOT"
  [ -d "$ROOT" ] || die "$ROOT is not a directory"
  dir=$ROOT
  while :; do
    uid=$(stat -c %u -- "$dir")
    mode=$(stat -c %a -- "$dir")
    [ "$uid" = 0 ] || [ "$uid" = "$me" ] || die "$dir belongs to uid $uid, not root or $me; refusing to use $ROOT"
    if (( 8#$mode & 8#022 )) && { [ "$dir" = "$ROOT" ] || ! (( 8#$mode & 8#1000 )); }; then
      die "$dir is writable by others (mode $mode); refusing to use $ROOT"
    fi
    [ "$dir" = / ] && break
    dir=$(dirname -- "$dir")
  done
  CONF=$ROOT/etc/slurm.conf
  export SLURM_CONF=$CONF
}

# For `up`: create ROOT (mode 0755, never through an existing name or link), then check it.
make_root() {
  [ -e "$ROOT" ] || [ -L "$ROOT" ] || mkdir -m 755 -- "$ROOT" || die "cannot create $ROOT; set ZRL_SLURM_ROOT"
  secure_root
}

# For `down` and `status`: true when ROOT exists (and is then checked); false when there is no cluster there.
existing_root() {
  [ -e "$ROOT" ] || [ -L "$ROOT" ] || return 1
  secure_root
}

# The pid in FILE when that process is alive, else nothing.
live_pid() {
  local file=$1 pid
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

node_state() { timeout 5 sinfo -h -o %T 2>/dev/null | head -n1 || true; }

install_packages() {
  local missing=()
  for bin in slurmctld slurmd sinfo munged; do
    command -v "$bin" >/dev/null || missing=(slurmctld slurmd slurm-client munge)
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing Slurm/munge binaries and no apt-get; install ${missing[*]} by hand"
  say "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

write_conf() {
  local mem_mb cpus
  mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
  mem_mb=$((mem_mb > 2048 ? mem_mb - 1024 : mem_mb))
  cpus=$(nproc)
  # config_overrides lets the node claim more CPUs than it has, so jobs of several tasks start on small machines.
  cpus=$((cpus < 8 ? 8 : cpus))
  cat >"$CONF" <<EOF
ClusterName=zrldev
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$ROOT/munge/munge.socket.2
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$ROOT/log/jobcomp.txt
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool
SlurmctldPidFile=$ROOT/run/slurmctld.pid
SlurmdPidFile=$ROOT/run/slurmd.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd.log
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
MailProg=/bin/true
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
}

start_munge() {
  [ -n "$(live_pid "$ROOT/munge/munged.pid")" ] && return 0
  chown munge:munge "$ROOT/munge"
  chmod 755 "$ROOT/munge" # munged refuses a socket directory that others cannot traverse
  [ -s "$ROOT/munge/munge.key" ] || runuser -u munge -- mungekey -c -k "$ROOT/munge/munge.key"
  runuser -u munge -- munged --socket="$ROOT/munge/munge.socket.2" --key-file="$ROOT/munge/munge.key" \
    --pid-file="$ROOT/munge/munged.pid" --log-file="$ROOT/munge/munged.log" --seed-file="$ROOT/munge/munged.seed"
}

up() {
  [ "$(id -u)" -eq 0 ] || die "'up' needs root (it starts munged as the munge user and slurmd as root)"
  make_root
  install_packages
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
  local rc=0 name file pid
  existing_root || { echo "no cluster under $ROOT"; return 1; }
  for pair in munged:$ROOT/munge/munged.pid slurmctld:$ROOT/run/slurmctld.pid slurmd:$ROOT/run/slurmd.pid; do
    name=${pair%%:*}
    file=${pair#*:}
    pid=$(live_pid "$file")
    if [ -n "$pid" ]; then echo "$name: running (pid $pid)"; else echo "$name: stopped"; rc=1; fi
  done
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
