"""`RayScheduler` driven directly on a real local Ray cluster (tests/ray_cluster.py): states and exit codes, logs,
stopping one worker, relaunching it, placement by node id; and the checks that need no cluster."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from ray_cluster import RayCluster, ray_head  # noqa: F401
from test_controller_e2e import alive

from zrl.config import RayOptions, RayPlacement, Resources
from zrl.controller.schedulers.base import JobState, WorkerLaunch
from zrl.controller.schedulers.ray_options import ray_option_errors, ray_placement_errors


def launch(tmp_path: Path, group: str, code: str, index: int = 0, placement: RayPlacement | None = None
           ) -> WorkerLaunch:
    placement = placement or RayPlacement()
    return WorkerLaunch(group=group, index=index, argv=(sys.executable, "-c", code), env={"ZRL_TEST_VALUE": "42"},
                        log_path=tmp_path / "logs" / f"{group}-{index}.log", resources=Resources(cpus=1, memory_mb=64),
                        ray=placement)


def wait_states(scheduler, want: dict[str, JobState], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        states = scheduler.poll()
        if all(worker in states and states[worker].state is state for worker, state in want.items()):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"wanted {want}, have {states}")
        time.sleep(0.1)


def test_bad_options_and_placements_name_their_field():
    assert ray_option_errors(RayOptions()) == []
    assert ray_option_errors(RayOptions(address="ray://head:10001")) == []
    assert ray_option_errors(RayOptions(address="head", namespace="", poll_interval_s=-1)) == [
        "address: 'head' is not auto, host:port or ray://host:port",
        "namespace: '' must be a non-empty name without spaces", "poll_interval_s: must be >= 0, got -1"]
    assert ray_placement_errors(RayPlacement(labels=("gpu=a100",), resource="fast_disk")) == []
    assert ray_placement_errors(RayPlacement(node_id="n1", labels=("gpu",), resource="a b", strategy="spread")) == [
        "node_id: 'n1' is not a Ray node id (56 hex digits, as `ray list nodes` prints them)",
        "labels: entry 'gpu' is not key=value", "resource: 'a b' is not a resource name",
        "strategy: spread reserves the group's nodes as a placement group, which does not take node_id or labels; "
        "give one or the other"]


def test_an_actors_death_maps_to_a_lost_node_memory_or_failure():
    from ray.exceptions import RayActorError

    from zrl.controller.schedulers.ray_cluster import _actor_died_status

    def died(message: str):
        return RayActorError(None, message)

    node = _actor_died_status(died("The actor died because its node has died. Node Id: 0af3"), stopped=False)
    assert node.state is JobState.NODE_FAIL and "its node has died" in node.detail
    memory = _actor_died_status(died("Task was killed due to the node running low on memory."), stopped=False)
    assert memory.state is JobState.OUT_OF_MEMORY
    assert _actor_died_status(died("The actor died unexpectedly"), stopped=False).state is JobState.FAILED
    assert _actor_died_status(died("The actor died because its node has died."), stopped=True).state is \
        JobState.CANCELLED


@pytest.mark.ray
def test_states_exit_codes_logs_stop_and_relaunch(tmp_path: Path, ray_head: RayCluster):  # noqa: F811
    from zrl.controller.schedulers.ray_cluster import RayScheduler

    scheduler = RayScheduler(RayOptions(address=ray_head.address, poll_interval_s=0), tmp_path / "run")
    sleeper = ("import os, signal, time\n"
               "signal.signal(signal.SIGUSR1, lambda *_: print('stacks asked for', flush=True))\n"
               "print('value', os.environ['ZRL_TEST_VALUE'], flush=True)\n"
               "time.sleep(600)")
    scheduler.submit([launch(tmp_path, "ok", "print('hello')"), launch(tmp_path, "bad", "raise SystemExit(3)"),
                      launch(tmp_path, "sleeper", sleeper)])
    try:
        states = wait_states(scheduler, {"ok/0": JobState.COMPLETED, "bad/0": JobState.FAILED,
                                         "sleeper/0": JobState.RUNNING})
        assert (states["bad/0"].exit_code, states["bad/0"].detail) == (3, "exited with code 3")
        assert (tmp_path / "logs" / "ok-0.log").read_text() == "hello\n"
        pid = scheduler.pids()["sleeper/0"]
        deadline = time.monotonic() + 30
        while "value 42" not in (tmp_path / "logs" / "sleeper-0.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (tmp_path / "logs" / "sleeper-0.log").read_text() == "value 42\n"
        scheduler.dump_stacks(["sleeper/0"])
        deadline = time.monotonic() + 30
        while "stacks" not in (tmp_path / "logs" / "sleeper-0.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (tmp_path / "logs" / "sleeper-0.log").read_text() == "value 42\nstacks asked for\n"
        scheduler.stop(["sleeper/0"], timeout=5)
        assert scheduler.poll()["sleeper/0"].state is JobState.CANCELLED
        assert not alive(pid)
        # A relaunch: a new actor, on the node the first one ran on (by its id).
        node_id = scheduler.nodes()["sleeper/0"]
        scheduler.submit([launch(tmp_path, "sleeper", sleeper, placement=RayPlacement(node_id=node_id))])
        wait_states(scheduler, {"sleeper/0": JobState.RUNNING})
        assert scheduler.pids()["sleeper/0"] != pid and scheduler.nodes()["sleeper/0"] == node_id
        with pytest.raises(ValueError, match="sleeper/0 is still running in Ray"):
            scheduler.submit([launch(tmp_path, "sleeper", sleeper)])
    finally:
        scheduler.stop()
    assert {worker: status.state for worker, status in scheduler.poll().items()} == {
        "ok/0": JobState.COMPLETED, "bad/0": JobState.FAILED, "sleeper/0": JobState.CANCELLED}
    assert (tmp_path / "run" / "ray" / "sleeper.0.json").stat().st_mode & 0o777 == 0o600


@pytest.mark.ray
def test_a_placement_no_node_can_take_stays_pending_saying_why(tmp_path: Path, ray_head: RayCluster):  # noqa: F811
    from zrl.controller.schedulers.ray_cluster import RayScheduler

    scheduler = RayScheduler(RayOptions(address=ray_head.address, poll_interval_s=0), tmp_path / "run")
    scheduler.submit([launch(tmp_path, "gpu", "print(1)", placement=RayPlacement(resource="no_such_thing"))])
    try:
        time.sleep(3)
        status = scheduler.poll()["gpu/0"]
        assert status.state is JobState.PENDING
        assert status.detail == ("waiting for Ray to place its actor: num_cpus=1 num_gpus=0 memory=64 MiB "
                                 "resource=no_such_thing")
    finally:
        scheduler.stop()
    assert scheduler.poll()["gpu/0"].state is JobState.CANCELLED
