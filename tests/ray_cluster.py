"""A real local Ray cluster for tests: `ray start --head` on free ports with its own temp directory, and nodes that
join it (from a network namespace of the two-node machinery); torn down by the pids of its own processes, so that
no other Ray cluster on the machine is touched.

Tests import the fixture: `from ray_cluster import ray_head  # noqa: F401`.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import free_port, require

RAY = str(Path(sys.executable).with_name("ray"))
CPUS_PER_NODE = 8
"""Logical CPUs each node offers: a TreePO run asks for one per worker, more than this machine's cores."""


@dataclass
class RayCluster:
    """A running Ray cluster whose every process mentions `temp_dir` on its command line."""

    address: str
    """host:port of the head's GCS, for ray.address."""
    temp_dir: Path
    node_dirs: list[Path] = field(default_factory=list)

    def pids(self) -> list[int]:
        """Every live process of this cluster (head, joined nodes, and their Ray workers)."""
        return processes_mentioning([str(self.temp_dir), *map(str, self.node_dirs)])

    def session_files(self) -> list[Path]:
        """Every file Ray wrote for this cluster (logs, session state, the GCS's storage)."""
        return [path for root in (self.temp_dir, *self.node_dirs) for path in root.rglob("*") if path.is_file()]

    def files_holding(self, secrets: Sequence[bytes]) -> list[str]:
        """Ray's files of this cluster that hold any of `secrets`."""
        found = []
        for path in self.session_files():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            found += [str(path) for secret in secrets if secret in data]
        return found

    def stop(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.1)


def processes_mentioning(texts: Sequence[str]) -> list[int]:
    """The pids of processes whose command line contains any of `texts`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(text in cmdline for text in texts):
            found.append(int(entry.name))
    return found


def start_args(temp_dir: Path, host: str, labels: str) -> list[str]:
    """`ray start` flags shared by the head and joined nodes: own temp dir, fixed logical CPUs, free ports (taken
    on loopback: a node in its own network namespace has all of its ports free)."""
    return [f"--temp-dir={temp_dir}", f"--node-ip-address={host}", f"--num-cpus={CPUS_PER_NODE}",
            "--disable-usage-stats", f"--labels={labels}", "--min-worker-port=0", "--max-worker-port=0",
            f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}"]


def start_head(host: str = "127.0.0.1", labels: str = "zrl-node=head") -> RayCluster:
    """A Ray head on a free port of `host` (Unix socket paths are short, so its temp dir is under /tmp)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="zrl-ray-", dir="/tmp"))
    port = free_port(host)
    cluster = RayCluster(f"{host}:{port}", temp_dir)
    argv = [RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", f"--dashboard-port={free_port()}",
            f"--ray-client-server-port={free_port()}", *start_args(temp_dir, host, labels)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180, env={**os.environ,
                                                                                     "RAY_USAGE_STATS_ENABLED": "0"})
    if result.returncode != 0:
        cluster.stop()
        raise RuntimeError(f"`ray start --head` failed ({result.returncode}): {result.stderr[-3000:]}")
    return cluster


def require_ray() -> None:
    require(importlib.util.find_spec("ray") is not None and Path(RAY).exists(),
            "Ray is not installed (make test installs zrl[ray])")


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayCluster]:
    """A single-node Ray cluster on loopback for the session; its processes are killed at the end."""
    require_ray()
    cluster = start_head()
    try:
        yield cluster
    finally:
        cluster.stop()
