"""SlurmScheduler when a node stops answering, on the two-node cluster (tests/two_node_cluster.py): stopping its
workers costs one SIGKILL wait, said once; later stops do not wait for it; once it answers again, it is trusted."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import time
from pathlib import Path

import pytest
from test_slurm import python_worker
from two_node_cluster import TwoNodeCluster, two_node_cluster  # noqa: F401

from zrl.controller.schedulers import JobState, SlurmOptions, SlurmPlacement, SlurmScheduler, WorkerLaunch

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def sleeper(run_dir: Path, group: str, node: str) -> WorkerLaunch:
    return dataclasses.replace(python_worker(run_dir, group, 0, "import time; time.sleep(300)"),
                               slurm=SlurmPlacement(nodelist=node))


def wait_for(scheduler: SlurmScheduler, worker: str, state: JobState, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (status := scheduler.poll()[worker]).state is not state:
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def warnings_of(caplog, text: str) -> list[str]:
    return [record.message for record in caplog.records if text in record.message]


def test_a_node_that_stops_answering_is_waited_for_once(two_node_cluster: TwoNodeCluster,  # noqa: F811
                                                        tmp_path: Path, monkeypatch, caplog):
    cluster = two_node_cluster
    n1, n2 = cluster.nodes
    monkeypatch.setenv("SLURM_CONF", cluster.slurm_conf)
    caplog.set_level(logging.WARNING, logger="zrl.controller.schedulers.slurm")
    run_dir = tmp_path / "runs" / "exp" / "t"
    scheduler = SlurmScheduler(SlurmOptions(partition=cluster.partition, poll_interval_s=0.1), run_dir)
    scheduler.submit([sleeper(run_dir, "far", n2), sleeper(run_dir, "near", n1), sleeper(run_dir, "other", n2)])
    for worker in ("far/0", "near/0", "other/0"):
        wait_for(scheduler, worker, JobState.RUNNING)
    cluster.cut(n2)
    try:
        started = time.monotonic()
        scheduler.stop(["far/0"], timeout=0)
        assert 9 < time.monotonic() - started < 20  # one SIGKILL wait, then the node counts as not answering
        assert warnings_of(caplog, "did not end the SIGKILLed steps") == [
            f"Slurm node {n2} did not end the SIGKILLed steps of workers far/0 within 10 s: it no longer answers "
            "(cut off or down); its jobs stay cancelled and nothing waits for them any more (Slurm marks them "
            "NODE_FAIL once it declares the node down)"]
        states = scheduler.poll()
        assert states["far/0"].state is JobState.CANCELLED
        assert states["other/0"].state is JobState.NODE_FAIL, states["other/0"]
        assert f"its node {n2} does not answer" in states["other/0"].detail
        assert states["near/0"].state is JobState.RUNNING
        started = time.monotonic()
        scheduler.stop(timeout=5)  # the reachable node's job ends on SIGTERM; nothing waits for the other node
        assert time.monotonic() - started < 5
        assert len(warnings_of(caplog, "did not end")) == 1
        assert scheduler.poll()["near/0"].state is JobState.CANCELLED
    finally:
        cluster.heal(n2)
    # Healed, the node ends the cancelled jobs; once Slurm shows them ended, the node is trusted again.
    job_ids = ",".join(scheduler.job_ids().values())
    deadline = time.monotonic() + 90
    while subprocess.run(["squeue", "-h", "-j", job_ids, "-o", "%T"], capture_output=True, text=True,
                         env=cluster.env(), timeout=30).stdout.strip():
        assert time.monotonic() < deadline, "the cancelled jobs did not end after the node was healed"
        time.sleep(0.5)
    scheduler.poll()
    assert warnings_of(caplog, f"Slurm node {n2} answers again")
    scheduler.submit([sleeper(run_dir, "late", n2)])
    wait_for(scheduler, "late/0", JobState.RUNNING)
    scheduler.stop(timeout=5)
    assert scheduler.poll()["late/0"].state is JobState.CANCELLED
    assert len(warnings_of(caplog, "did not end")) == 1
