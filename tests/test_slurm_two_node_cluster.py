"""scripts/slurm-two-node-cluster.sh: two Slurm nodes in network namespaces on a private bridge, each with its own
host name and /etc/hosts, reachable from the controller host and each other only on the bridge."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import RedisServer, require
from two_node_cluster import (  # noqa: F401
    TwoNodeCluster,
    bridge_redis,
    run_script,
    two_node_cluster,
)

from zrl.hosts import interface_of

pytestmark = pytest.mark.slurm

DEV_CLUSTER_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "slurm-dev-cluster.sh"

# Run by every task of a step: what the node looks like from inside.
PROBE_NODE = """
import json, socket, sys
controller, controller_name = sys.argv[1:3]
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    sock.connect((controller, 9))  # no packet is sent: this only picks the route, and so the source address
    source = sock.getsockname()[0]
hostname = socket.gethostname()
print(json.dumps({"hostname": hostname, "resolves_to": socket.gethostbyname(hostname), "source": source,
                  "controller": socket.gethostbyname(controller_name),
                  "interfaces": [name for _, name in socket.if_nameindex()]}))
"""

# Run by every task of a step: which of its node's targets (name -> [host, port]) it can connect to (it sends a
# redis PING to the one named redis), and whether the node has a default route.
PROBE_REACH = """
import json, socket, sys
targets = json.loads(sys.argv[1])[socket.gethostname()]
reached = {}
for name, (host, port) in targets.items():
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            reached[name] = "connected"
            if name == "redis":
                sock.sendall(b"PING\\r\\n")
                reached[name] = sock.recv(64).decode(errors="replace")
    except OSError as error:
        reached[name] = f"failed: {error}"
with open("/proc/net/route") as routes:
    default = any(line.split()[1] == "00000000" for line in routes.readlines()[1:])
print(json.dumps({"hostname": socket.gethostname(), "reached": reached, "default_route": default}))
"""


def conf_value(cluster: TwoNodeCluster, key: str) -> str:
    found = re.search(rf"^{key}=(\S+)", Path(cluster.slurm_conf).read_text(), re.M)
    assert found is not None, f"{key} is missing from {cluster.slurm_conf}"
    return found.group(1)


def slurmd_port(cluster: TwoNodeCluster) -> int:
    return int(conf_value(cluster, "SlurmdPort"))


def controller_name(cluster: TwoNodeCluster) -> str:
    return conf_value(cluster, "SlurmctldHost").split("(")[0]


def srun_per_node(cluster: TwoNodeCluster, argv: list[str], timeout: float = 60) -> list[dict]:
    """Run `argv` once on each node in one step; each task prints one JSON line."""
    result = subprocess.run(
        ["srun", f"--partition={cluster.partition}", f"--nodes={len(cluster.nodes)}", "--ntasks-per-node=1",
         "--time=2", *argv],
        env=cluster.env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def probe_node_argv(cluster: TwoNodeCluster) -> list[str]:
    return [sys.executable, "-c", PROBE_NODE, cluster.controller_address, controller_name(cluster)]


def can_connect(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def node_states(cluster: TwoNodeCluster) -> dict[str, str]:
    result = subprocess.run(["sinfo", "-N", "-h", "-o", "%N %T"], env=cluster.env(), capture_output=True,
                            text=True, timeout=30)
    return dict(line.split() for line in result.stdout.splitlines())


def all_idle(cluster: TwoNodeCluster) -> bool:
    states = node_states(cluster)
    return sorted(states) == sorted(cluster.nodes) and all(state.startswith("idle") for state in states.values())


def test_one_task_runs_on_each_node_with_its_own_name_and_interfaces(two_node_cluster: TwoNodeCluster):  # noqa: F811
    cluster = two_node_cluster
    tasks = srun_per_node(cluster, probe_node_argv(cluster))
    assert sorted(task["hostname"] for task in tasks) == sorted(cluster.nodes)
    for task in tasks:
        assert task["source"] == cluster.addresses[task["hostname"]]
        assert task["resolves_to"] == "127.0.1.1"
        assert task["controller"] == cluster.controller_address
        interfaces = task["interfaces"]
        assert "mgmt0" in interfaces and "eth0" in interfaces
        assert interfaces.index("mgmt0") < interfaces.index("eth0")


def test_job_steps_reach_the_controller_and_each_other_only_on_the_bridge(
        two_node_cluster: TwoNodeCluster, bridge_redis: RedisServer):  # noqa: F811
    cluster = two_node_cluster
    port = slurmd_port(cluster)
    first, second = cluster.nodes
    targets = {
        node: {"redis": (bridge_redis.host, bridge_redis.port), "other": (cluster.addresses[other], port),
               "other_mgmt": (cluster.management_addresses[other], port)}
        for node, other in ((first, second), (second, first))
    }
    tasks = srun_per_node(cluster, [sys.executable, "-c", PROBE_REACH, json.dumps(targets)])
    assert sorted(task["hostname"] for task in tasks) == sorted(cluster.nodes)
    for task in tasks:
        assert task["reached"]["redis"].startswith("-NOAUTH"), task
        assert task["reached"]["other"] == "connected", task
        assert task["reached"]["other_mgmt"].startswith("failed"), task
        assert task["default_route"] is False, task


def test_cut_isolates_a_node_until_heal(two_node_cluster: TwoNodeCluster):  # noqa: F811
    cluster = two_node_cluster
    node = cluster.nodes[-1]
    port = slurmd_port(cluster)
    assert can_connect(cluster.addresses[node], port)
    controller = (cluster.controller_address, int(conf_value(cluster, "SlurmctldPort")))
    reach_controller = [sys.executable, "-c", PROBE_REACH, json.dumps({node: {"ctl": controller}})]
    cluster.cut(node)
    try:
        assert not can_connect(cluster.addresses[node], port)
        probe = json.loads(cluster.run_on(node, reach_controller).stdout)
        assert probe["reached"]["ctl"].startswith("failed"), probe
    finally:
        cluster.heal(node)
    deadline = time.monotonic() + 5
    while not can_connect(cluster.addresses[node], port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert can_connect(cluster.addresses[node], port)
    probe = json.loads(cluster.run_on(node, reach_controller).stdout)
    assert probe["reached"]["ctl"] == "connected", probe


def test_runs_beside_the_single_node_cluster(two_node_cluster: TwoNodeCluster):  # noqa: F811
    cluster = two_node_cluster
    dev_root = os.environ.get("ZRL_SLURM_ROOT") or "/run/zrl-slurm"

    def dev_script(action: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(DEV_CLUSTER_SCRIPT), action, dev_root], capture_output=True, text=True,
                              timeout=300)

    already_up = dev_script("status").returncode == 0
    if not already_up:
        result = dev_script("up")
        require(result.returncode == 0, f"the single-node cluster does not come up: {result.stderr[-2000:]}")
    dev_env = {**os.environ, "SLURM_CONF": f"{dev_root}/etc/slurm.conf"}
    try:
        dev_nodes = subprocess.run(["sinfo", "-N", "-h", "-o", "%N"], env=dev_env, capture_output=True, text=True,
                                   timeout=30).stdout.split()
        assert dev_nodes and not set(dev_nodes) & set(cluster.nodes)
        assert sorted(node_states(cluster)) == sorted(cluster.nodes)
        dev_host = subprocess.run(["srun", "--time=1", "hostname"], env=dev_env, capture_output=True, text=True,
                                  timeout=60)
        assert dev_host.returncode == 0 and dev_host.stdout.strip() not in cluster.nodes, dev_host.stderr
        tasks = srun_per_node(cluster, probe_node_argv(cluster))
        assert sorted(task["hostname"] for task in tasks) == sorted(cluster.nodes)
    finally:
        if not already_up:
            dev_script("down")


def test_a_cluster_under_another_root_leaves_this_one_alone(two_node_cluster: TwoNodeCluster,  # noqa: F811
                                                            tmp_path: Path):
    cluster = two_node_cluster
    other = tmp_path / "other"
    up = run_script(other, "up", timeout=60)
    assert up.returncode != 0 and f"belongs to the cluster under {cluster.root}" in up.stderr
    down = run_script(other, "down", timeout=60)
    assert down.returncode == 0 and "leaving node" in down.stderr
    assert run_script(cluster.root, "status").returncode == 0
    assert all_idle(cluster)


def test_down_leaves_nothing_behind_and_up_restores(two_node_cluster: TwoNodeCluster):  # noqa: F811
    cluster = two_node_cluster
    bridge = interface_of(cluster.controller_address)
    assert bridge is not None
    try:
        assert run_script(cluster.root, "down").returncode == 0
        status = run_script(cluster.root, "status")
        assert status.returncode == 1 and "slurmctld: stopped" in status.stdout
        assert "running" not in status.stdout
        leftovers = subprocess.run(["pgrep", "-af", str(cluster.root)], capture_output=True, text=True)
        assert leftovers.stdout == ""
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not set(cluster.nodes) & {line.split()[0] for line in namespaces.splitlines() if line}
        assert subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode != 0
        assert run_script(cluster.root, "down").returncode == 0  # idempotent
    finally:
        up = run_script(cluster.root, "up", timeout=120)
    assert up.returncode == 0, up.stderr
    assert f"export SLURM_CONF={cluster.slurm_conf}" in up.stdout
    assert all_idle(cluster)
