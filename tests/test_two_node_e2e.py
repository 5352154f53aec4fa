"""The TreePO experiment through the controller on a two-node Slurm cluster (tests/two_node_cluster.py): workers on
both nodes by per-group placement, CURVE on, a password-protected Redis name service, worker_host=auto; two
trainers across the nodes; a SIGKILLed controller; a node cut off mid-run."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from test_treepo_e2e import RUN_TIMEOUT_S, SHORT, TreepoRun, check_completed_run
from test_treepo_failover import wait_for_step
from two_node_cluster import TwoNodeCluster, bridge_redis, two_node_cluster  # noqa: F401

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

LEASE_S = 10.0
EXIT_GRACE_S = 5.0


def cluster_run(tmp_path: Path, cluster: TwoNodeCluster, redis, *overrides: str) -> TreepoRun:  # noqa: F811
    """The TreePO experiment on `cluster`, its name service `redis` (the password from the environment)."""
    env = {**cluster.env(), "ZRL_NAME_RESOLVE_PASSWORD": redis.password}
    return TreepoRun(tmp_path, "scheduler=slurm", f"slurm.partition={cluster.partition}", "slurm.poll_interval_s=0.5",
                     f"name_resolve={redis.url}", "worker_host=auto", "security.curve=on", *overrides, env=env)


def endless_run(tmp_path: Path, cluster: TwoNodeCluster, redis) -> TreepoRun:  # noqa: F811
    """A run that goes on until stopped: the policy and evaluator on the first node, trainer and rollout on the
    second; a short controller lease."""
    n1, n2 = cluster.nodes
    return cluster_run(tmp_path, cluster, redis, "total_steps=1000", "prompts_per_step=2", "tree.width=4",
                       f"timeouts.controller_lease_s={LEASE_S:g}", f"timeouts.exit_grace_s={EXIT_GRACE_S:g}",
                       *place(policy=n1, evaluator=n1, trainer=n2, rollout=n2))


def place(**nodes: str) -> list[str]:
    return [f"workers.{group}.slurm.nodelist={node}" for group, node in nodes.items()]


def trial_jobs(cluster: TwoNodeCluster, trial: str) -> list[str]:
    """'name state node' of this trial's jobs that are pending, running or completing."""
    listed = subprocess.run(["squeue", "-h", "-o", "%j %T %N"], capture_output=True, text=True, timeout=30,
                            check=True, env=cluster.env()).stdout.splitlines()
    return sorted(line for line in listed if line.startswith(f"zrl-treepo_math-{trial}-"))


def wait_until(condition, timeout: float, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while not (result := condition()) and time.monotonic() < deadline:
        time.sleep(poll)
    return result


def advertised(run: TreepoRun, worker: str) -> str:
    """The address a worker's log says it advertised, and why."""
    log = (run.run_dir / "logs" / f"{worker.replace('/', '-')}.log").read_text()
    found = re.search(r"advertising (\S+) on node (\S+): (.*)", log)
    assert found is not None, log
    return f"{found[1]} on {found[2]}: {found[3]}"


@pytest.mark.timeout(RUN_TIMEOUT_S + 180)
def test_treepo_across_two_nodes_placed_per_group(tmp_path: Path, two_node_cluster: TwoNodeCluster,  # noqa: F811
                                                  bridge_redis):  # noqa: F811
    cluster = two_node_cluster
    n1, n2 = cluster.nodes
    run = cluster_run(tmp_path, cluster, bridge_redis, *SHORT,
                      *place(policy=n1, evaluator=n1, trainer=n2, rollout=n2))
    summary = check_completed_run(run)
    workers = summary["workers"]
    assert {w: workers[w]["last"]["node"] for w in workers} == {
        "policy/0": n1, "evaluator/0": n1, "trainer/0": n2, "rollout/0": n2}
    # Each node's host name resolves to 127.0.1.1 and its first interface is one no other node reaches: the
    # worker advertises the address of the interface that routes to the name service.
    route = f"which routes to the name service at {cluster.controller_address}"
    assert advertised(run, "policy/0") == f"{cluster.addresses[n1]} on {n1}: the address of eth0, {route}"
    assert advertised(run, "trainer/0") == f"{cluster.addresses[n2]} on {n2}: the address of eth0, {route}"
    script = run.run_dir / "slurm" / f"zrl-treepo_math-{run.trial}-trainer.sbatch"
    assert f"#SBATCH --nodelist={n2}" in script.read_text()
    assert script.stat().st_mode & 0o777 == 0o600  # it holds the name service's password, for the workers
    assert bridge_redis.password not in run.output


@pytest.mark.timeout(RUN_TIMEOUT_S + 180)
def test_two_trainers_one_per_node(tmp_path: Path, two_node_cluster: TwoNodeCluster, bridge_redis):  # noqa: F811
    cluster = two_node_cluster
    run = cluster_run(tmp_path, cluster, bridge_redis, *SHORT, "trainers=2", "workers.trainer.slurm.ntasks_per_node=1")
    summary = check_completed_run(run, trainers=2)
    assert {summary["workers"][f"trainer/{i}"]["last"]["node"] for i in range(2)} == set(cluster.nodes)


@pytest.mark.timeout(RUN_TIMEOUT_S + 180)
def test_a_sigkilled_controller_leaves_nothing_on_either_node(tmp_path: Path, two_node_cluster: TwoNodeCluster,  # noqa: F811
                                                              bridge_redis):  # noqa: F811
    cluster = two_node_cluster
    n1, n2 = cluster.nodes
    run = endless_run(tmp_path, cluster, bridge_redis)
    try:
        wait_for_step(run, 1)
        assert len(run.worker_pids()) == 4
        assert {line.split()[2] for line in trial_jobs(cluster, run.trial)} == {n1, n2}
        run.process.kill()
        run.process.wait()
        killed_at = time.monotonic()
        # The lease lapses lease_s after the kill (its TTL, then as long again absent), and each worker exits.
        # Slack for a loaded machine: alone the workers are gone about 12 s after the kill.
        assert wait_until(lambda: not run.worker_pids(), LEASE_S + EXIT_GRACE_S + 20), run.worker_pids()
        workers_gone_s = time.monotonic() - killed_at
        assert wait_until(lambda: not trial_jobs(cluster, run.trial), 20), trial_jobs(cluster, run.trial)
        print(f"workers gone {workers_gone_s:.1f} s, jobs gone {time.monotonic() - killed_at:.1f} s after the kill")
    finally:
        if run.process.poll() is None:
            run.process.kill()


@pytest.mark.timeout(RUN_TIMEOUT_S + 240)
def test_a_node_cut_off_mid_run_stops_the_run_naming_it(tmp_path: Path, two_node_cluster: TwoNodeCluster,  # noqa: F811
                                                       bridge_redis):  # noqa: F811
    cluster = two_node_cluster
    n2 = cluster.nodes[1]
    run = endless_run(tmp_path, cluster, bridge_redis)
    try:
        wait_for_step(run, 2)
        cluster.cut(n2)
        cut_at = time.monotonic()
        assert run.wait(timeout=120) == 1, run.output
        stopped_s = time.monotonic() - cut_at
        output = run.output
        assert re.search(rf"error: worker (trainer|rollout)/0 failed: LOST: .* on node {n2} "
                         rf"\({re.escape(cluster.addresses[n2])}\)", output), output
        assert f"Slurm node {n2} did not end the SIGKILLed steps" in output, output
        assert output.count(f"Slurm node {n2} did not end") == 1, output
        # Lost after timeouts.lost_after_s (5 s), then one SIGKILL wait (10 s) for the node, not a minute.
        assert stopped_s < 40, (stopped_s, output)
        summary = run.summary()
        assert summary["sample_accounting"]["balanced"] is True, summary["sample_accounting"]
        assert "(balanced)" in output
        print(f"the run stopped {stopped_s:.1f} s after the node was cut off")
    finally:
        cluster.heal(n2)
        if run.process.poll() is None:
            run.process.kill()
        # Healed, the node's workers see the controller's lease gone and exit; Slurm ends their jobs.
        assert wait_until(lambda: not run.worker_pids(), LEASE_S + EXIT_GRACE_S + 30), run.worker_pids()
        assert wait_until(lambda: not trial_jobs(cluster, run.trial), 120), trial_jobs(cluster, run.trial)
