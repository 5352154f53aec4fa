"""The TreePO experiment through `scheduler=ray` on a Ray cluster of two nodes: the head in this machine's network
namespace, on the bridge of the two-node machinery (tests/two_node_cluster.py), and a node joined from the
namespace of zrl-n1. The policy and the trainer run on different nodes; a SIGKILLed controller leaves no worker on
either; a lost node stops the run."""

from __future__ import annotations

import os
import re
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray_cluster import RAY, RayCluster, processes_mentioning, require_ray, start_args, start_head
from test_controller_e2e import alive
from test_treepo_e2e import RUN_TIMEOUT_S, SHORT, TreepoRun, check_completed_run
from test_treepo_failover import wait_for_step
from test_two_node_e2e import wait_until
from two_node_cluster import TwoNodeCluster, bridge_redis, two_node_cluster  # noqa: F401

from zrl.streams.control_key_file import control_key_path

pytestmark = [pytest.mark.ray, pytest.mark.slurm, pytest.mark.slow]

LEASE_S = 10.0
EXIT_GRACE_S = 5.0


@pytest.fixture(scope="module")
def ray_two_nodes(two_node_cluster: TwoNodeCluster) -> Iterator[RayCluster]:  # noqa: F811
    """A Ray head on the bridge address of this machine (label zrl-node=head) and a node on the first emulated
    node (label zrl-node=<its name>)."""
    require_ray()
    node = two_node_cluster.nodes[0]
    head = start_head(host=two_node_cluster.controller_address)
    node_dir = Path(tempfile.mkdtemp(prefix="zrl-ray-node-", dir="/tmp"))
    head.node_dirs.append(node_dir)
    try:
        joined = two_node_cluster.run_on(node, [RAY, "start", f"--address={head.address}", *start_args(
            node_dir, two_node_cluster.addresses[node], f"zrl-node={node}")], timeout=180)
        assert joined.returncode == 0, f"ray start on {node} failed: {joined.stderr[-3000:]}"
        yield head
    finally:
        head.stop()


def ray_run(tmp_path: Path, head: RayCluster, redis, *overrides: str) -> TreepoRun:  # noqa: F811
    """The TreePO experiment on `head`'s cluster, its name service `redis` (the password from the environment)."""
    return TreepoRun(tmp_path, "scheduler=ray", f"ray.address={head.address}", "ray.poll_interval_s=0.5",
                     f"name_resolve={redis.url}", "worker_host=auto", "security.curve=on", *overrides,
                     env={**os.environ, "ZRL_NAME_RESOLVE_PASSWORD": redis.password})


@pytest.mark.timeout(RUN_TIMEOUT_S + 240)
def test_treepo_through_ray_with_policy_and_trainer_on_different_nodes(
        tmp_path: Path, two_node_cluster: TwoNodeCluster, ray_two_nodes: RayCluster, bridge_redis):  # noqa: F811
    node = two_node_cluster.nodes[0]
    run = ray_run(tmp_path, ray_two_nodes, bridge_redis, *SHORT, f"workers.policy.ray.labels=zrl-node={node}",
                  f"workers.evaluator.ray.labels=zrl-node={node}", "workers.trainer.ray.labels=zrl-node=head")
    summary = check_completed_run(run)
    nodes = {worker: summary["workers"][worker]["last"]["node"] for worker in ("policy/0", "evaluator/0", "trainer/0")}
    assert nodes == {"policy/0": node, "evaluator/0": node, "trainer/0": socket.gethostname()}
    key = control_key_path(run.run_dir)
    assert ray_two_nodes.files_holding([bridge_redis.password.encode()]) == []
    assert bridge_redis.password not in run.output
    assert not key.exists()  # the controller removes it at the end; its workers read it from the shared filesystem


@pytest.mark.timeout(RUN_TIMEOUT_S + 180)
def test_a_sigkilled_controller_leaves_nothing_on_either_node(
        tmp_path: Path, two_node_cluster: TwoNodeCluster, ray_two_nodes: RayCluster, bridge_redis):  # noqa: F811
    node = two_node_cluster.nodes[0]
    run = ray_run(tmp_path, ray_two_nodes, bridge_redis, "total_steps=1000", "prompts_per_step=2", "tree.width=4",
                  f"timeouts.controller_lease_s={LEASE_S:g}", f"timeouts.exit_grace_s={EXIT_GRACE_S:g}",
                  f"workers.policy.ray.labels=zrl-node={node}", "workers.trainer.ray.labels=zrl-node=head")
    try:
        wait_for_step(run, 1)
        assert len(run.worker_pids()) == 4
        key = control_key_path(run.run_dir).read_bytes().strip()
        assert ray_two_nodes.files_holding([key]) == []
        run.process.kill()
        run.process.wait()
        killed_at = time.monotonic()
        assert wait_until(lambda: not run.worker_pids(), LEASE_S + EXIT_GRACE_S + 20), run.log_tails()
        print(f"workers gone {time.monotonic() - killed_at:.1f} s after the kill")
    finally:
        if run.process.poll() is None:
            run.process.kill()


@pytest.mark.timeout(RUN_TIMEOUT_S + 180)
def test_a_lost_ray_node_stops_the_run_naming_its_workers(
        tmp_path: Path, two_node_cluster: TwoNodeCluster, ray_two_nodes: RayCluster, bridge_redis):  # noqa: F811
    # Last in this module: it kills the joined node.
    node = two_node_cluster.nodes[0]
    run = ray_run(tmp_path, ray_two_nodes, bridge_redis, "total_steps=1000", "prompts_per_step=2", "tree.width=4",
                  f"workers.policy.ray.labels=zrl-node={node}", "workers.trainer.ray.labels=zrl-node=head")
    try:
        wait_for_step(run, 1)
        policy_pid = run.worker_pids()["policy/0"]
        for pid in processes_mentioning([str(directory) for directory in ray_two_nodes.node_dirs]):
            os.kill(pid, signal.SIGKILL)
        lost_at = time.monotonic()
        assert run.wait(timeout=120) == 1, run.output
        stopped_s = time.monotonic() - lost_at
        assert re.search(rf"error: worker policy/0 failed: (LOST: no answer for|its process ended \(NODE_FAIL).* "
                         rf"on node {node}", run.output), run.output
        assert stopped_s < 60, (stopped_s, run.output)
        assert not alive(policy_pid)  # it died with its actor
        assert run.summary()["sample_accounting"]["balanced"] is True
    finally:
        if run.process.poll() is None:
            run.process.kill()
