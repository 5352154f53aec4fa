"""Failure handling through the real controller: killed, erroring and hung workers, and Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
from test_controller_e2e import ControllerRun, alive

from zrl.config import ControllerTimeouts
from zrl.controller.supervisor import restart_delay
from zrl.nameresolve import make_name_resolver, names
from zrl.streams.control import ControlClient
from zrl.streams.control_key_file import control_key_path, read_control_key
from zrl.streams.curve import CurveKeys

# A run long enough to be hit mid-way: 2 producers x 10 batches, each batch followed by a 0.15 s pause.
SLOW = ("workers.producer.config.num_samples=100", "workers.producer.config.batch_size=10",
        "workers.producer.config.interval_s=0.15", "workers.consumer.config.expected_samples=200")


def kill_producer_mid_run(run: ControllerRun) -> int:
    run.wait_for_output("workers RUNNING")
    time.sleep(0.4)
    pid = run.worker_pids()["producer/0"]
    os.kill(pid, signal.SIGKILL)
    return pid


def test_sigkilled_worker_is_restarted_with_on_failure_and_the_run_completes(tmp_path: Path):
    run = ControllerRun(tmp_path, *SLOW, "workers.producer.restart=on_failure", "workers.producer.max_restarts=1")
    old_pid = kill_producer_mid_run(run)
    assert run.wait() == 0, run.output
    assert ("worker producer/0 failed (its process ended (FAILED: killed by signal 9 (SIGKILL)))"
            f" on node {socket.gethostname()} (127.0.0.1); restarting it (1/1)") in run.output
    summary = run.summary()
    assert summary["workers"]["producer/0"]["restarts"] == 1
    assert summary["workers"]["producer/0"]["last"]["pid"] != old_pid
    consumer = summary["workers"]["consumer/0"]["last"]["stats"]
    # The relaunched producer starts again from 0: its repeats arrive as duplicates, and every sample arrives.
    assert consumer["distinct"] == 200 and consumer["wrong_answers"] == 0
    assert consumer["samples"]["received"] == consumer["distinct"] + consumer["duplicates"]
    # What the killed process produced still counts (by its last status, or by what reached the consumer from it
    # if that is more: it went on posting after its last status), so the accounting balances.
    [ended] = summary["workers"]["producer/0"]["ended_processes"]
    killed = ended["stats"]["accounting"]
    delivered = consumer["accounting"]["received_from"][killed["incarnation"]]
    accounting = summary["sample_accounting"]
    assert accounting["produced"] == 200 + max(killed["produced"], delivered), (accounting, killed, delivered)
    assert accounting["lost"] == max(0, killed["produced"] - delivered), accounting
    assert accounting["balanced"] and accounting["received"] == consumer["samples"]["received"], accounting
    assert run.worker_pids() == {}


@pytest.mark.parametrize("killed", [1, 2], ids=["one-server", "both-servers"])
def test_a_group_may_lose_up_to_max_failed_workers(tmp_path: Path, killed: int):
    # 2 producers x 30 batches of 10, each followed by a 0.15 s pause: long enough for both kills.
    run = ControllerRun(tmp_path, "workers.producer.config.num_samples=300", "workers.producer.config.batch_size=10",
                        "workers.producer.config.interval_s=0.15", "workers.consumer.config.expected_samples=600",
                        "workers.server.count=2", "workers.server.max_failed=1")
    run.wait_for_output("workers RUNNING")
    time.sleep(0.4)
    pids = run.worker_pids()
    os.kill(pids["server/1"], signal.SIGKILL)
    run.wait_for_output("the experiment goes on without it (1 of workers.server.max_failed=1 failed)")
    if killed == 2:
        os.kill(pids["server/0"], signal.SIGKILL)
        assert run.wait(timeout=30) == 1, run.output
        assert "error: worker server/0 failed: its process ended (FAILED: killed by signal 9 (SIGKILL))" in run.output
        assert run.worker_pids() == {}
        return
    assert run.wait() == 0, run.output
    summary = run.summary()
    assert (summary["workers"]["server/1"]["status"], summary["workers"]["server/1"]["restarts"]) == ("FAILED", 0)
    consumer = summary["workers"]["consumer/0"]["last"]["stats"]
    assert consumer["distinct"] == 600 and consumer["duplicates"] == 0 and summary["sample_accounting"]["balanced"]
    assert run.worker_pids() == {}


def test_workers_failing_together_are_all_restarted_after_a_backoff(tmp_path: Path):
    # The second failure is seen while the first worker is being relaunched: it must be restarted too.
    run = ControllerRun(tmp_path, *SLOW, "workers.producer.restart=on_failure", "workers.producer.max_restarts=1",
                        "workers.producer.restart_backoff_s=0.5")
    run.wait_for_output("workers RUNNING")
    time.sleep(0.4)
    pids = run.worker_pids()
    for worker in ("producer/0", "producer/1"):
        os.kill(pids[worker], signal.SIGKILL)
    assert run.wait() == 0, run.output
    for worker in ("producer/0", "producer/1"):
        assert f"worker {worker} failed (its process ended" in run.output
        assert run.summary()["workers"][worker]["restarts"] == 1
    assert "restarting it (1/1) in 0.5 s" in run.output
    consumer = run.summary()["workers"]["consumer/0"]["last"]["stats"]
    assert consumer["distinct"] == 200 and consumer["wrong_answers"] == 0


def test_restart_delays_double_up_to_a_bound():
    assert [restart_delay(1.0, n) for n in range(1, 5)] == [1.0, 2.0, 4.0, 8.0]
    assert restart_delay(1.0, 20) == 60.0 and restart_delay(0.0, 3) == 0.0 and restart_delay(90.0, 2) == 90.0


def test_sigkilled_worker_with_never_stops_the_run_within_15_s(tmp_path: Path):
    run = ControllerRun(tmp_path, *SLOW)
    kill_producer_mid_run(run)
    killed_at = time.monotonic()
    code = run.wait(timeout=30)
    assert time.monotonic() - killed_at < 15
    assert code == 1, run.output
    assert "error: worker producer/0 failed: its process ended (FAILED: killed by signal 9 (SIGKILL))" in run.output
    assert "last lines of" in run.output and "producer-0.log" in run.output and "started" in run.output
    assert run.summary()["exit_code"] == 1
    assert run.worker_pids() == {}


def test_worker_error_stops_the_run_and_prints_its_traceback(tmp_path: Path):
    run = ControllerRun(tmp_path, drill="producer/0:fail@2")
    assert run.wait(timeout=30) == 1, run.output
    assert "worker error: RuntimeError: drill: fail after 2 batches ($ZRL_DRILL)" in run.output
    assert "Traceback (most recent call last)" in run.output and "in _poll" in run.output
    assert run.summary()["workers"][run.output.split("error: worker ")[1].split()[0]]["status"] == "ERROR"


@pytest.mark.parametrize(("timeouts", "reason"), [
    (("timeouts.lost_after_s=2", "timeouts.keepalive_ttl_s=5"), "LOST: no answer for"),
    (("timeouts.lost_after_s=60", "timeouts.keepalive_ttl_s=1"), "LOST: its control name expired"),
], ids=["no-answer", "name-expired"])
def test_a_hung_worker_is_lost_and_stops_the_run(tmp_path: Path, timeouts: tuple[str, str], reason: str):
    run = ControllerRun(tmp_path, *SLOW, *timeouts, "timeouts.stop_s=2")
    run.wait_for_output("workers RUNNING")
    pid = run.worker_pids()["server/0"]
    os.kill(pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        assert run.wait(timeout=30) == 1, run.output
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert time.monotonic() - stopped_at < 10
    assert f"error: worker server/0 failed: {reason}" in run.output
    assert run.summary()["workers"]["server/0"]["status"] == "LOST"
    assert not alive(pid)


@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["", "started-with-SIGINT-ignored"])
def test_sigint_to_the_controller_leaves_no_worker_alive(tmp_path: Path, sigint_ignored: bool):
    run = ControllerRun(tmp_path, "workers.producer.config.num_samples=1000000", "workers.producer.config.interval_s=0.05",
                        "workers.consumer.config.expected_samples=2000000", sigint_ignored=sigint_ignored)
    run.wait_for_output("workers RUNNING")
    pids = run.worker_pids()
    assert len(pids) == 4 and all(alive(pid) for pid in pids.values())
    run.process.send_signal(signal.SIGINT)
    assert run.wait(timeout=20) == 130, run.output
    assert "interrupted: stopping every worker" in run.output
    assert [worker for worker, pid in pids.items() if alive(pid)] == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_or_sighup_to_the_controller_leaves_no_worker_alive(tmp_path: Path, sig: signal.Signals):
    run = ControllerRun(tmp_path, *SLOW)
    run.wait_for_output("workers RUNNING")
    pids = run.worker_pids()
    run.process.send_signal(sig)
    assert run.wait(timeout=20) == 130, run.output
    assert "interrupted: stopping every worker" in run.output
    assert run.summary()["exit_code"] == 130
    assert [worker for worker, pid in pids.items() if alive(pid)] == []


def test_workers_exit_when_the_controller_is_killed(tmp_path: Path):
    run = ControllerRun(tmp_path, *SLOW)
    run.wait_for_output("workers RUNNING")
    pids = run.worker_pids()
    run.process.kill()
    run.process.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [worker for worker, pid in pids.items() if alive(pid)] == []


def test_a_hung_worker_dies_soon_after_its_controller_is_sigkilled(tmp_path: Path):
    # Its _poll never returns, so the parent-death SIGTERM alone would only set a flag that nothing reads.
    run = ControllerRun(tmp_path, *SLOW, "timeouts.exit_grace_s=2", drill="producer/0:hang@0")
    run.wait_for_output("workers RUNNING")
    pids = run.worker_pids()
    time.sleep(0.5)
    run.process.kill()
    run.process.wait()
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        assert [worker for worker, pid in pids.items() if alive(pid)] == []
    finally:
        for pid in pids.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    log = (run.run_dir / "logs" / "producer-0.log").read_text()
    assert "has exited; exiting" in log and "in _poll" in log  # the stack dump shows where it hung


def test_a_worker_stuck_in_poll_is_lost_with_its_stacks_in_its_log(tmp_path: Path):
    # The producer's control thread keeps answering and its name stays alive; only its _poll never returns.
    assert 0 < ControllerTimeouts().poll_stall_s < float("inf")  # on by default; the run below shortens it
    run = ControllerRun(tmp_path, *SLOW, "timeouts.poll_stall_s=2", "timeouts.stop_s=2", drill="producer/0:hang@2")
    assert run.wait(timeout=40) == 1, run.output
    assert "LOST: its _poll has not returned for" in run.output
    failed = run.output.split("error: worker ")[1].split()[0]
    assert failed.startswith("producer/")
    assert run.summary()["workers"][failed]["status"] == "LOST"
    assert run.worker_pids() == {}
    log = (run.run_dir / "logs" / f"{failed.replace('/', '-')}.log").read_text()
    assert "in deadlock_in_native_code" in log and "in _poll" in log


def test_a_worker_paused_and_never_resumed_stops_the_run(tmp_path: Path):
    run = ControllerRun(tmp_path, *SLOW, "timeouts.poll_stall_s=2")
    run.wait_for_output("workers RUNNING")
    resolver = make_name_resolver(f"file://{run.run_dir / 'names'}")
    key = read_control_key(control_key_path(run.run_dir))
    client = ControlClient(run.trial, sender="operator", key=key, curve=CurveKeys.derive(key))
    try:
        client.connect("consumer/0", resolver.get(names.worker_control("echo", run.trial, "consumer/0")))
        assert client.request("consumer/0", "pause", timeout=5)["consumer/0"].ok
        assert run.wait(timeout=30) == 1, run.output
    finally:
        client.close()
        resolver.close()
    assert "error: worker consumer/0 failed: it has been PAUSED for" in run.output
    assert run.worker_pids() == {}
