#!/usr/bin/env bash
# A two-node Slurm cluster emulated on one machine with Linux network namespaces, for tests of multi-node runs.
#   bash scripts/slurm-two-node-cluster.sh up|down|status|cut NODE|heal NODE|exec NODE CMD...
# ROOT holds the config, state, logs, sockets and pid files: $ZRL_SLURM2_ROOT, else /run/zrl-slurm2.
#
# Layout: a private bridge (ZRL_SLURM2_BRIDGE, default zrlbr2) on a private /24 (ZRL_SLURM2_SUBNET, default
# 10.231.0.0/24). The root network namespace holds .1 on the bridge: it is the controller host, where slurmctld
# (host name zrl-ctl, in its own UTS namespace), Redis and the zrl controller run. Nodes zrl-n1 (.11) and zrl-n2
# (.12) are network namespaces wired to the bridge by a veth (eth0 inside), with no default route, so their
# traffic stays on the bridge. Each node also has a management interface mgmt0, listed before eth0, whose address
# (ZRL_SLURM2_MGMT_SUBNET, default 10.232.0.0/24, .11 and .12) no other node can reach. Each node's slurmd (and so
# every job step on it) runs with the node's name as host name and its own /etc/hosts; the file system is shared.
#
# Its munged, ports (ZRL_SLURM2_CTLD_PORT 6917, ZRL_SLURM2_SLURMD_PORT 6918) and ClusterName (zrlpair) differ from
# those of scripts/slurm-dev-cluster.sh, so both clusters can run at once; a Slurm client picks one by SLURM_CONF.
#
# `up` must run as root on a Debian-like machine; it installs the packages with apt when they are missing, waits
# until both nodes are idle and prints the `export SLURM_CONF=...` line every Slurm client needs. `down` cancels
# every job, stops the daemons by pid and removes the namespaces, links and bridge. Both are idempotent.
# `cut NODE` disconnects a node from the bridge (nothing reaches it, it reaches nothing); `heal NODE` reconnects it.
# `exec NODE CMD...` runs CMD in the node's network, UTS and mount namespaces (those of its slurmd).
# Run as root, this script trusts what it finds under ROOT (it kills the pids in its pid files), so ROOT and every
# directory above it must belong to root or the caller and be writable by no one else; it refuses any other ROOT.
set -euo pipefail

ACTION=${1:-}
ROOT=${ZRL_SLURM2_ROOT:-/run/zrl-slurm2}
BRIDGE=${ZRL_SLURM2_BRIDGE:-zrlbr2}
SUBNET=${ZRL_SLURM2_SUBNET:-10.231.0.0/24}
MGMT_SUBNET=${ZRL_SLURM2_MGMT_SUBNET:-10.232.0.0/24}
CTLD_PORT=${ZRL_SLURM2_CTLD_PORT:-6917}
SLURMD_PORT=${ZRL_SLURM2_SLURMD_PORT:-6918}
CLUSTER_NAME=zrlpair
CTL_HOST=zrl-ctl
PARTITION=pair
NODES=(zrl-n1 zrl-n2)
NODE_CPUS=8

SCRIPT_NAME=slurm-two-node-cluster
ROOT_VARIABLE=ZRL_SLURM2_ROOT
# shellcheck source=scripts/slurm-cluster-common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/slurm-cluster-common.sh"

# The first three octets of a /24 such as 10.231.0.0/24.
prefix24() {
  [[ $1 =~ ^([0-9]+\.[0-9]+\.[0-9]+)\.0/24$ ]] || die "subnet '$1' is not of the form A.B.C.0/24"
  echo "${BASH_REMATCH[1]}"
}
NET=$(prefix24 "$SUBNET")
MGMT_NET=$(prefix24 "$MGMT_SUBNET")
CTL_ADDR=$NET.1

node_index() {
  local i
  for i in "${!NODES[@]}"; do [ "${NODES[$i]}" = "$1" ] && { echo $((i + 1)); return 0; }; done
  die "unknown node '$1'; the nodes are ${NODES[*]}"
}
node_addr() { echo "$NET.$((10 + $(node_index "$1")))"; }
mgmt_addr() { echo "$MGMT_NET.$((10 + $(node_index "$1")))"; }
# The bridge end of a node's veth (interface names have at most 15 characters).
host_veth() { echo "v$BRIDGE-$(node_index "$1")"; }

munged_pid_file() { echo "$ROOT/munge/munged.pid"; }
slurmctld_pid_file() { echo "$ROOT/run/slurmctld.pid"; }
slurmd_pid_file() { echo "$ROOT/run/slurmd-$1.pid"; }

# "NODE STATE" for each node sinfo knows.
node_states() { timeout 5 sinfo -N -h -o '%N %T' 2>/dev/null || true; }

all_nodes_ready() {
  local states=$1 node state
  for node in "${NODES[@]}"; do
    state=$(awk -v n="$node" '$1 == n {print $2; exit}' <<<"$states")
    [[ $state == idle* || $state == mix* || $state == alloc* ]] || return 1
  done
}


write_conf() {
  local mem_mb nodes_csv node
  mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 / 2) - 512}' /proc/meminfo)
  mem_mb=$((mem_mb < 512 ? 512 : mem_mb))
  nodes_csv=$(IFS=,; echo "${NODES[*]}")
  # config_overrides lets each node claim more CPUs than the machine has, so jobs of several tasks start.
  {
    common_slurm_conf
    cat <<EOF
ClusterName=$CLUSTER_NAME
SlurmctldHost=$CTL_HOST($CTL_ADDR)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SelectTypeParameters=CR_Core_Memory
SlurmdSpoolDir=$ROOT/spool/%n
SlurmdPidFile=$ROOT/run/slurmd-%n.pid
SlurmdLogFile=$ROOT/log/slurmd-%n.log
DefMemPerCPU=$((mem_mb / NODE_CPUS))
# Nodes are pinged every SlurmdTimeout/3 s; a healed node gets the kills it missed at the next ping.
SlurmdTimeout=30
EOF
    for node in "${NODES[@]}"; do
      echo "NodeName=$node NodeAddr=$(node_addr "$node") CPUs=$NODE_CPUS RealMemory=$mem_mb State=UNKNOWN"
    done
    echo "PartitionName=$PARTITION Nodes=$nodes_csv Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
  } >"$CONF"
}

# A node's /etc/hosts: its own name on 127.0.1.1 as on a stock Debian machine, the others on the bridge.
write_hosts() {
  local node=$1 other
  mkdir -p "$ROOT/nodes/$node"
  {
    echo "127.0.0.1 localhost"
    echo "127.0.1.1 $node"
    for other in "${NODES[@]}"; do
      [ "$other" = "$node" ] || echo "$(node_addr "$other") $other"
    done
    echo "$CTL_ADDR $CTL_HOST"
    echo "::1 localhost ip6-localhost ip6-loopback"
  } >"$ROOT/nodes/$node/hosts"
}

# The bridge and each node's eth0 carry the ROOT of the cluster that made them in their alias: the node names
# are fixed, so a cluster under another ROOT would otherwise take over, or tear down, this one's network.
owner_tag() { echo "zrl-slurm2:$ROOT"; }

# The ROOT recorded on link DEV (in network namespace NETNS, or the root one when empty), if any.
link_owner() {
  local netns=$1 dev=$2 where=()
  [ -z "$netns" ] || where=(-n "$netns")
  { ip "${where[@]}" -o link show dev "$dev" 2>/dev/null || true; } | sed -n 's/.*\\    alias zrl-slurm2://p'
}

# True when link DEV exists and was made by a cluster under another ROOT.
foreign_link() {
  local owner
  owner=$(link_owner "$1" "$2")
  [ -n "$owner" ] && [ "$owner" != "$ROOT" ]
}

foreign_node() { [ -e "/run/netns/$1" ] && foreign_link "$1" eth0; }

# For `up`: refuse a network that another cluster's `up` made.
check_network_free() {
  local node
  if foreign_link "" "$BRIDGE"; then
    die "bridge $BRIDGE belongs to the cluster under $(link_owner "" "$BRIDGE"); take that one down" \
      "(ZRL_SLURM2_ROOT=$(link_owner "" "$BRIDGE") bash $0 down) or set ZRL_SLURM2_BRIDGE"
  fi
  for node in "${NODES[@]}"; do
    if foreign_node "$node"; then
      die "node $node belongs to the cluster under $(link_owner "$node" eth0); take that one down first" \
        "(ZRL_SLURM2_ROOT=$(link_owner "$node" eth0) bash $0 down)"
    fi
  done
}

ensure_bridge() {
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip link set "$BRIDGE" alias "$(owner_tag)"
  ip -4 addr show dev "$BRIDGE" | grep -q "inet $CTL_ADDR/" || ip addr add "$CTL_ADDR/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

# mgmt0 gets its address and index before eth0 exists, so it comes first in the interface list. Where the
# kernel has no dummy links, a veth whose peer stays inside the node serves: it reaches nothing outside either
# (the kernel numbers the end named last first, hence the order of the names).
add_mgmt_link() {
  local node=$1
  ip -n "$node" link add mgmt0 type dummy 2>/dev/null ||
    ip -n "$node" link add mgmt0-peer type veth peer name mgmt0 ||
    die "cannot create the management interface of $node (neither dummy nor veth links work)"
  ip -n "$node" link set mgmt0-peer up 2>/dev/null || true
  ip -n "$node" addr add "$(mgmt_addr "$node")/24" dev mgmt0
  ip -n "$node" link set mgmt0 up
}

ensure_node_net() {
  local node=$1 veth
  veth=$(host_veth "$node")
  [ -e "/run/netns/$node" ] || ip netns add "$node"
  ip -n "$node" link set lo up
  ip -n "$node" link show mgmt0 >/dev/null 2>&1 || add_mgmt_link "$node"
  if ! ip -n "$node" link show eth0 >/dev/null 2>&1; then
    ip link del "$veth" 2>/dev/null || true
    ip link add "$veth" type veth peer name eth0 netns "$node"
    ip -n "$node" addr add "$(node_addr "$node")/24" dev eth0
  fi
  ip -n "$node" link set eth0 alias "$(owner_tag)"
  ip link set "$veth" master "$BRIDGE" up
  ip -n "$node" link set eth0 up
}


# slurmctld stays in the root network namespace (the controller host) but needs the host name of SlurmctldHost,
# so it gets its own UTS namespace. The shell writes its own pid, which exec hands on to the daemon (nsenter and
# unshare without --fork exec in place too), and setsid keeps the daemons out of the caller's process group.
start_slurmctld() {
  [ -n "$(live_pid "$(slurmctld_pid_file)")" ] && return 0
  setsid unshare --uts -- sh -c 'echo $$ >"$1" && hostname "$2" && shift 2 && exec "$@"' sh \
    "$(slurmctld_pid_file)" "$CTL_HOST" slurmctld -D -c -f "$CONF" \
    </dev/null >>"$ROOT/log/slurmctld.out" 2>&1 &
}

# nsenter --net rather than `ip netns exec`, which remounts /sys, where slurmd then finds no cgroup file system.
# The private mount namespace keeps the node's /etc/hosts bind mount away from the host.
start_slurmd() {
  local node=$1
  [ -n "$(live_pid "$(slurmd_pid_file "$node")")" ] && return 0
  mkdir -p "$ROOT/spool/$node"
  setsid nsenter --net="/run/netns/$node" -- unshare --uts --mount --propagation private -- \
    sh -c 'echo $$ >"$1" && hostname "$2" && mount --bind "$3" /etc/hosts && shift 3 && exec "$@"' sh \
    "$(slurmd_pid_file "$node")" "$node" "$ROOT/nodes/$node/hosts" slurmd -D -f "$CONF" -N "$node" \
    </dev/null >>"$ROOT/log/slurmd-$node.out" 2>&1 &
}

# A pid file is written by the started shell itself, an instant after the start; wait for it.
wait_pid_file() {
  local file=$1
  for _ in $(seq 50); do [ -n "$(live_pid "$file")" ] && return 0; sleep 0.1; done
  die "$(basename "$file" .pid) did not start; see $ROOT/log"
}

up() {
  [ "$(id -u)" -eq 0 ] || die "'up' needs root (it creates network namespaces and starts munged and the Slurm daemons)"
  make_root
  install_packages "slurmctld slurmd sinfo munged ip nsenter unshare" slurmctld slurmd slurm-client munge iproute2 util-linux
  check_network_free
  mkdir -p "$ROOT"/{etc,state,spool,log,run,munge,nodes}
  [ -n "$(live_pid "$(slurmctld_pid_file)")" ] || write_conf
  ensure_bridge
  local node
  for node in "${NODES[@]}"; do
    write_hosts "$node"
    ensure_node_net "$node"
  done
  start_munge
  start_slurmctld
  wait_pid_file "$(slurmctld_pid_file)"
  for node in "${NODES[@]}"; do
    start_slurmd "$node"
    wait_pid_file "$(slurmd_pid_file "$node")"
  done
  local states=""
  for _ in $(seq 150); do
    states=$(node_states)
    all_nodes_ready "$states" && break
    sleep 0.2
  done
  all_nodes_ready "$states" ||
    die "the nodes did not become idle within 30 s (sinfo: '$(echo $states)'); see $ROOT/log/slurmctld.log and slurmd-*.log"
  say "up ($(echo $states))"
  echo "export SLURM_CONF=$CONF"
}

# Stop the daemons whose pids are in FILES together (each takes a second or two to end), by pid.
stop_pid_files() {
  local file pid pids=()
  for file in "$@"; do
    pid=$(live_pid "$file")
    [ -z "$pid" ] || pids+=("$pid")
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "${pids[@]}" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
}

# Whatever still runs in a node's network namespace once its slurmd is gone (a job step slurmd left behind)
# belongs to this cluster; end it so that nothing keeps the namespace alive.
stop_node_processes() {
  local node=$1 pids
  [ -e "/run/netns/$node" ] || return 0
  pids=$(ip netns pids "$node" 2>/dev/null || true)
  [ -n "$pids" ] || return 0
  kill $pids 2>/dev/null || true
  for _ in $(seq 30); do
    [ -z "$(ip netns pids "$node" 2>/dev/null || true)" ] && return 0
    sleep 0.1
  done
  kill -9 $(ip netns pids "$node" 2>/dev/null || true) 2>/dev/null || true
}

# Remove this cluster's namespaces and links, and end what still runs in them; leave another cluster's alone.
remove_network() {
  local node
  for node in "${NODES[@]}"; do
    if foreign_node "$node"; then
      say "leaving node $node alone: it belongs to the cluster under $(link_owner "$node" eth0)"
      continue
    fi
    stop_node_processes "$node"
    ip link del "$(host_veth "$node")" 2>/dev/null || true
    if [ -e "/run/netns/$node" ]; then ip netns del "$node"; fi
  done
  if foreign_link "" "$BRIDGE"; then
    say "leaving bridge $BRIDGE alone: it belongs to the cluster under $(link_owner "" "$BRIDGE")"
  else
    ip link del "$BRIDGE" 2>/dev/null || true
  fi
}

down() {
  local node
  if existing_root; then
    if [ -n "$(live_pid "$(slurmctld_pid_file)")" ]; then
      timeout 10 scancel --user="$(id -un)" 2>/dev/null || true
      # Give running jobs KillWait (5 s) plus a margin to end before slurmd goes away.
      for _ in $(seq 40); do
        [ -z "$(timeout 5 squeue -h -t pending,running,completing,configuring -o %i 2>/dev/null)" ] && break
        sleep 0.25
      done
    fi
    local slurm_daemons=("$(slurmctld_pid_file)")
    for node in "${NODES[@]}"; do slurm_daemons+=("$(slurmd_pid_file "$node")"); done
    stop_pid_files "${slurm_daemons[@]}"
    stop_pid_files "$(munged_pid_file)"
  else
    say "no cluster under $ROOT"
  fi
  remove_network
  say "down"
}

status() {
  local rc=0 node
  existing_root || { echo "no cluster under $ROOT"; return 1; }
  local daemons=("munged:$(munged_pid_file)" "slurmctld:$(slurmctld_pid_file)")
  for node in "${NODES[@]}"; do daemons+=("slurmd $node:$(slurmd_pid_file "$node")"); done
  daemon_states "${daemons[@]}" || rc=1
  if [ $rc -eq 0 ]; then
    node_states | sed 's/^/node /'
    echo "export SLURM_CONF=$CONF"
  fi
  return $rc
}

# The node's veth end on the bridge, down: frames to and from the node go nowhere.
set_link() {
  local node=$1 state=$2 veth
  node_index "$node" >/dev/null
  veth=$(host_veth "$node")
  ip link show "$veth" >/dev/null 2>&1 || die "$node has no link $veth; is the cluster up? (run: $0 up)"
  existing_root || die "no cluster under $ROOT; run: $0 up"
  foreign_node "$node" && die "node $node belongs to the cluster under $(link_owner "$node" eth0), not $ROOT"
  ip link set "$veth" "$state"
}

node_exec() {
  local node=$1 pid
  shift
  [ $# -gt 0 ] || die "usage: $0 exec NODE CMD..."
  node_index "$node" >/dev/null
  existing_root || die "no cluster under $ROOT; run: $0 up"
  pid=$(live_pid "$(slurmd_pid_file "$node")")
  [ -n "$pid" ] || die "slurmd of $node is not running; run: $0 up"
  exec nsenter -t "$pid" -n -u -m --wd="$PWD" -- "$@"
}

case "$ACTION" in
  up) up ;;
  down) down ;;
  status) status ;;
  cut) [ $# -eq 2 ] || die "usage: $0 cut NODE"; set_link "$2" down ;;
  heal) [ $# -eq 2 ] || die "usage: $0 heal NODE"; set_link "$2" up ;;
  exec) shift; node_exec "$@" ;;
  *) die "usage: $0 up|down|status|cut NODE|heal NODE|exec NODE CMD... (ROOT from \$ZRL_SLURM2_ROOT)" ;;
esac
