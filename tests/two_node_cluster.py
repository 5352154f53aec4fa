"""A two-node Slurm cluster emulated on this machine with network namespaces (scripts/slurm-two-node-cluster.sh),
and a password-protected redis-server on the controller's bridge address that the nodes' job steps reach.

Tests import the fixtures: `from two_node_cluster import bridge_redis, two_node_cluster  # noqa: F401`. The
cluster's Slurm clients need its SLURM_CONF, which this module never exports: pass `cluster.env()` (or
`SLURM_CONF=cluster.slurm_conf`) to every sinfo, sbatch and srun, since other tests use a single-node cluster
through the process's own SLURM_CONF.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import RedisServer, require

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "slurm-two-node-cluster.sh"
SLURM_BINARIES = ("slurmctld", "slurmd", "sinfo", "sbatch", "srun", "scancel", "munged")


def cluster_root() -> Path:
    return Path(os.environ.get("ZRL_SLURM2_ROOT") or "/run/zrl-slurm2")


def run_script(root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """scripts/slurm-two-node-cluster.sh ARGS for the cluster under `root`."""
    env = {**os.environ, "ZRL_SLURM2_ROOT": str(root)}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout)


@dataclass(frozen=True)
class TwoNodeCluster:
    """A live two-node cluster: its nodes' job steps run in their own network namespaces, on a bridge where this
    process's namespace holds `controller_address`; nodes reach that address and each other, nothing else."""

    slurm_conf: str
    root: Path
    controller_address: str
    nodes: tuple[str, ...]
    addresses: dict[str, str]  # node -> its address on the bridge
    partition: str
    # node -> the address of its mgmt0 interface, listed before the bridge's, which no other host reaches
    management_addresses: dict[str, str]

    @classmethod
    def from_conf(cls, root: Path) -> TwoNodeCluster:
        """The cluster that the slurm.conf under `root` describes (the script writes it)."""
        conf = root / "etc" / "slurm.conf"
        text = conf.read_text()
        controller = re.search(r"^SlurmctldHost=[^(\s]+\(([^)]+)\)", text, re.M)
        partition = re.search(r"^PartitionName=(\S+)", text, re.M)
        addresses = dict(re.findall(r"^NodeName=(\S+) NodeAddr=(\S+)", text, re.M))
        if controller is None or partition is None or len(addresses) < 2:
            raise RuntimeError(f"{conf} does not describe a two-node cluster; rerun {SCRIPT} down, then up")
        return cls(slurm_conf=str(conf), root=root, controller_address=controller.group(1),
                   nodes=tuple(addresses), addresses=addresses, partition=partition.group(1),
                   management_addresses={node: _mgmt_address(node) for node in addresses})

    def env(self) -> dict[str, str]:
        """A copy of os.environ whose Slurm clients talk to this cluster."""
        return {**os.environ, "SLURM_CONF": self.slurm_conf}

    def cut(self, node: str) -> None:
        """Disconnect `node` from the bridge: nothing reaches it and it reaches nothing, until `heal`."""
        self._script("cut", node)

    def heal(self, node: str) -> None:
        self._script("heal", node)

    def run_on(self, node: str, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess:
        """Run `argv` on `node` (its network, host name and /etc/hosts), outside Slurm; text output captured."""
        env = {**self.env(), "ZRL_SLURM2_ROOT": str(self.root)}
        return subprocess.run(["bash", str(SCRIPT), "exec", node, *argv], env=env, capture_output=True,
                              text=True, timeout=timeout)

    def _script(self, *args: str) -> None:
        result = run_script(self.root, *args, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"{SCRIPT.name} {' '.join(args)} failed: {result.stderr.strip()}")


def _mgmt_address(node: str) -> str:
    result = subprocess.run(["ip", "-n", node, "-4", "-o", "addr", "show", "dev", "mgmt0"], capture_output=True,
                            text=True, timeout=10)
    found = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", result.stdout)
    if found is None:
        raise RuntimeError(f"node {node} has no mgmt0 address ({result.stderr.strip()}); rerun {SCRIPT} up")
    return found.group(1)


def network_namespaces_work() -> bool:
    """Whether `ip netns add` works here (it needs root and a kernel with network namespaces)."""
    if shutil.which("ip") is None:
        return False
    probe = f"zrl-probe-{os.getpid()}"
    added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, timeout=10).returncode == 0
    if added:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return added


@pytest.fixture(scope="session")
def two_node_cluster() -> Iterator[TwoNodeCluster]:
    """The two-node cluster under $ZRL_SLURM2_ROOT (default /run/zrl-slurm2): the one already up there, or one
    brought up here and taken down at the end of the session."""
    require(os.geteuid() == 0, "the two-node Slurm cluster needs root (network namespaces, munged, slurmd)")
    require(all(shutil.which(name) for name in SLURM_BINARIES),
            "Slurm is not installed (scripts/setup-env.sh installs slurmctld, slurmd, slurm-client and munge as root)")
    require(network_namespaces_work(), "`ip netns add` does not work here, so the two nodes cannot be emulated")
    root = cluster_root()
    already_up = run_script(root, "status", timeout=30).returncode == 0
    if not already_up:
        result = run_script(root, "up", timeout=300)
        require(result.returncode == 0, f"slurm-two-node-cluster.sh up failed: {result.stderr[-2000:]}")
    try:
        yield TwoNodeCluster.from_conf(root)
    finally:
        if not already_up:
            run_script(root, "down")


@pytest.fixture
def bridge_redis(two_node_cluster: TwoNodeCluster, tmp_path: Path) -> Iterator[RedisServer]:
    """A password-protected redis-server on the controller's bridge address, for workers on the nodes."""
    require(shutil.which("redis-server") is not None,
            "redis-server is not installed (make test installs it with apt when run as root)")
    server = RedisServer(tmp_path, password="pw-" + os.urandom(8).hex(), host=two_node_cluster.controller_address)
    server.start()
    try:
        yield server
    finally:
        server.stop()
