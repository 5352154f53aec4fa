# Shell functions shared by the Slurm test-cluster scripts (slurm-dev-cluster.sh, slurm-two-node-cluster.sh).
# The sourcing script sets SCRIPT_NAME (for messages), ROOT and ROOT_VARIABLE (the variable that sets ROOT).

die() { echo "$SCRIPT_NAME: $*" >&2; exit 1; }
say() { echo "$SCRIPT_NAME: $*" >&2; }

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
  [ -e "$ROOT" ] || [ -L "$ROOT" ] || mkdir -m 755 -- "$ROOT" || die "cannot create $ROOT; set $ROOT_VARIABLE"
  secure_root
}

# For the other actions: true when ROOT exists (and is then checked); false when there is no cluster there.
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

# Install the Debian packages PACKAGES... when one of the binaries in $1 (space-separated) is missing.
install_packages() {
  local bins=$1 bin
  shift
  for bin in $bins; do
    command -v "$bin" >/dev/null && continue
    command -v apt-get >/dev/null || die "missing $bin and no apt-get; install $* by hand"
    say "apt-get install $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    return 0
  done
}

# Start the cluster's own munged (key, socket and pid file under $ROOT/munge) unless it runs.
start_munge() {
  [ -n "$(live_pid "$ROOT/munge/munged.pid")" ] && return 0
  chown munge:munge "$ROOT/munge"
  chmod 755 "$ROOT/munge" # munged refuses a socket directory that others cannot traverse
  [ -s "$ROOT/munge/munge.key" ] || runuser -u munge -- mungekey -c -k "$ROOT/munge/munge.key"
  runuser -u munge -- munged --socket="$ROOT/munge/munge.socket.2" --key-file="$ROOT/munge/munge.key" \
    --pid-file="$ROOT/munge/munged.pid" --log-file="$ROOT/munge/munged.log" --seed-file="$ROOT/munge/munged.seed" \
    </dev/null >/dev/null 2>&1
}

# The slurm.conf lines both test clusters share: munge under $ROOT, no cgroups, no accounting, state and logs
# under $ROOT, nodes that may claim more CPUs than the machine has (config_overrides), prompt scheduling.
common_slurm_conf() {
  cat <<EOF
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$ROOT/munge/munge.socket.2
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$ROOT/log/jobcomp.txt
StateSaveLocation=$ROOT/state
SlurmctldPidFile=$ROOT/run/slurmctld.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
MailProg=/bin/true
EOF
}

# Print "NAME: running (pid P)" or "NAME: stopped" for each NAME:PIDFILE argument; false when one is stopped.
daemon_states() {
  local rc=0 pair name pid
  for pair in "$@"; do
    name=${pair%%:*}
    pid=$(live_pid "${pair#*:}")
    if [ -n "$pid" ]; then echo "$name: running (pid $pid)"; else echo "$name: stopped"; rc=1; fi
  done
  return $rc
}
