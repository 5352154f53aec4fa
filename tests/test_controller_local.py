"""The local scheduler with real subprocesses: GPU assignment, states, and stop by pid (helpers included)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from test_controller_e2e import alive

from zrl.config import Resources
from zrl.controller.schedulers import JobState, LocalScheduler, WorkerLaunch, make_scheduler


def launch(tmp_path: Path, group: str, index: int, code: str, gpus: int = 0) -> WorkerLaunch:
    return WorkerLaunch(group, index, (sys.executable, "-c", code), {"ZRL_TEST_VALUE": f"{group}{index}"},
                        tmp_path / "logs" / f"{group}-{index}.log", Resources(gpus=gpus))


def wait_finished(scheduler: LocalScheduler, ids: list[str], timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = scheduler.poll()
        if all(states[w].state.finished for w in ids):
            return states
        time.sleep(0.05)
    raise AssertionError(f"not finished: {scheduler.poll()}")


def test_gpu_workers_get_devices_round_robin_and_env_reaches_the_worker(tmp_path: Path):
    scheduler = LocalScheduler(gpus=["0", "1", "2"])
    code = "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES', 'none'), os.environ['ZRL_TEST_VALUE'])"
    launches = [launch(tmp_path, "policy", i, code, gpus=1) for i in range(4)]
    launches += [launch(tmp_path, "trainer", 0, code, gpus=2), launch(tmp_path, "rollout", 0, code)]
    scheduler.submit(launches)
    states = wait_finished(scheduler, [la.worker_id for la in launches])
    assert all(states[la.worker_id].state == JobState.COMPLETED for la in launches)
    outputs = {la.worker_id: la.log_path.read_text().strip() for la in launches}
    assert outputs == {"policy/0": "0 policy0", "policy/1": "1 policy1", "policy/2": "2 policy2",
                       "policy/3": "0 policy3", "trainer/0": "1,2 trainer0", "rollout/0": "none rollout0"}


def test_a_relaunched_gpu_worker_gets_the_devices_it_had(tmp_path: Path):
    scheduler = LocalScheduler(gpus=["0", "1", "2"])
    code = "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"
    launches = [launch(tmp_path, "policy", i, code, gpus=1) for i in range(2)]
    scheduler.submit(launches)
    wait_finished(scheduler, ["policy/0", "policy/1"])
    scheduler.submit([launches[0]])  # the relaunch of a worker whose process ended
    wait_finished(scheduler, ["policy/0"])
    assert launches[0].log_path.read_text().split() == ["0", "0"]
    assert launches[1].log_path.read_text().split() == ["1"]


def test_gpu_workers_without_gpus_are_refused(tmp_path: Path):
    with pytest.raises(RuntimeError, match="need GPUs"):
        LocalScheduler(gpus=[]).submit([launch(tmp_path, "policy", 0, "pass", gpus=1)])


def test_exit_codes_become_states(tmp_path: Path):
    scheduler = LocalScheduler(gpus=[])
    scheduler.submit([launch(tmp_path, "ok", 0, "pass"), launch(tmp_path, "bad", 0, "raise SystemExit(3)"),
                      launch(tmp_path, "killed", 0, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")])
    states = wait_finished(scheduler, ["ok/0", "bad/0", "killed/0"])
    assert states["ok/0"].state == JobState.COMPLETED
    assert (states["bad/0"].state, states["bad/0"].exit_code, states["bad/0"].detail) == (
        JobState.FAILED, 3, "exited with code 3")
    assert states["killed/0"].state == JobState.FAILED and "SIGKILL" in states["killed/0"].detail


def test_stop_kills_by_pid_with_helpers_and_ignored_sigterm(tmp_path: Path):
    scheduler = LocalScheduler(gpus=[])
    helper_file = tmp_path / "helper.pid"
    # The worker ignores SIGTERM and starts a helper process; stop must still leave neither alive.
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(helper_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    scheduler.submit([launch(tmp_path, "stubborn", 0, code), launch(tmp_path, "plain", 0, "import time; time.sleep(60)")])
    deadline = time.monotonic() + 20
    while not helper_file.exists() or not helper_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pids = [*scheduler.pids().values(), int(helper_file.read_text())]
    assert scheduler.poll()["plain/0"].state == JobState.RUNNING
    started = time.monotonic()
    scheduler.stop(timeout=1.0)
    assert time.monotonic() - started < 5
    time.sleep(0.1)
    assert [pid for pid in pids if alive(pid)] == []
    assert {w: s.state for w, s in scheduler.poll().items()} == {"stubborn/0": JobState.CANCELLED,
                                                                  "plain/0": JobState.CANCELLED}


def test_make_scheduler_picks_by_name_and_names_the_unknown(tmp_path: Path):
    assert isinstance(make_scheduler("local", tmp_path), LocalScheduler)
    with pytest.raises(ValueError, match="unknown scheduler 'k8s'; allowed: local, slurm"):
        make_scheduler("k8s", tmp_path)
