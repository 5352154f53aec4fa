"""The demo experiment end to end through `python -m zrl.controller ... scheduler=slurm` on a real Slurm cluster."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_controller_e2e import ECHO, ControllerRun, alive, check_counts
from test_slurm import slurm_cluster  # noqa: F401 - the session fixture, shared with test_slurm.py

pytestmark = pytest.mark.slurm

SLURM = ("scheduler=slurm", "slurm.poll_interval_s=0.2")
# A run that only ends when it is stopped.
ENDLESS = ("workers.producer.config.num_samples=1000000", "workers.producer.config.interval_s=0.05",
           "workers.consumer.config.expected_samples=2000000")


def trial_jobs(trial: str, active_only: bool) -> list[str]:
    """'name state' of this trial's Slurm jobs: every one squeue still shows, or only pending/running/completing."""
    argv = ["squeue", "-h", "-o", "%j %T"] + ([] if active_only else ["-t", "all"])
    listed = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()
    return [line for line in listed if line.startswith(f"zrl-echo-{trial}-")]


def wait_no_active_jobs(trial: str, timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := trial_jobs(trial, active_only=True)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.mark.usefixtures("slurm_cluster")
def test_demo_through_slurm_on_a_file_name_service(tmp_path: Path) -> None:
    run = ControllerRun(tmp_path, *SLURM, f"name_resolve=file://{tmp_path / 'names'}")
    assert run.wait() == 0, run.output
    assert "all 4 workers RUNNING" in run.output and "done in" in run.output
    check_counts(run.summary(), 2, 200)
    jobs = trial_jobs(run.trial, active_only=False)
    assert sorted(line.split()[0] for line in jobs) == [
        f"zrl-echo-{run.trial}-{group}" for group in ("consumer", "producer", "server")]
    assert f"zrl-echo-{run.trial}-consumer COMPLETED" in jobs
    assert wait_no_active_jobs(run.trial) == []
    for worker in ("server-0", "consumer-0", "producer-0", "producer-1"):
        assert "registered control address" in (run.run_dir / "logs" / f"{worker}.log").read_text()


@pytest.mark.redis
@pytest.mark.usefixtures("slurm_cluster")
def test_demo_through_slurm_on_redis(tmp_path: Path, redis_server) -> None:
    run = ControllerRun(tmp_path, *SLURM, f"name_resolve={redis_server.url}")
    assert run.wait() == 0, run.output
    check_counts(run.summary(), 2, 200)
    assert wait_no_active_jobs(run.trial) == []


@pytest.mark.usefixtures("slurm_cluster")
def test_a_worker_exiting_non_zero_fails_the_run_with_its_log_tail(tmp_path: Path) -> None:
    # No local interface has this address, so every worker exits with code 1 when it binds its control socket.
    run = ControllerRun(tmp_path, *SLURM, "worker_host=192.0.2.1")
    assert run.wait() == 1, run.output
    assert re.search(r"error: worker \w+/\d failed: its process ended \(FAILED: worker exited with code 1 "
                     r"\(Slurm job \d+", run.output), run.output
    assert "last lines of" in run.output and "Cannot assign requested address" in run.output
    assert wait_no_active_jobs(run.trial) == []


@pytest.mark.usefixtures("slurm_cluster")
def test_sigint_to_the_controller_leaves_no_job_in_squeue(tmp_path: Path) -> None:
    run = ControllerRun(tmp_path, *SLURM, *ENDLESS)
    run.wait_for_output("workers RUNNING")
    assert len(trial_jobs(run.trial, active_only=True)) == 3
    pids = run.worker_pids()
    assert len(pids) == 4
    run.process.send_signal(signal.SIGINT)
    assert run.wait(timeout=30) == 130, run.output
    assert trial_jobs(run.trial, active_only=True) == []
    assert [worker for worker, pid in pids.items() if alive(pid)] == []


@pytest.mark.usefixtures("slurm_cluster")
def test_a_hung_worker_is_lost_then_every_job_ends_and_the_summary_is_written(tmp_path: Path) -> None:
    run = ControllerRun(tmp_path, *SLURM, *ENDLESS,
                        "timeouts.lost_after_s=2", "timeouts.stop_s=2")
    run.wait_for_output("workers RUNNING")
    pids = run.worker_pids()
    os.kill(pids["server/0"], signal.SIGSTOP)
    try:
        assert run.wait(timeout=60) == 1, run.output
    finally:
        if alive(pids["server/0"]):
            os.kill(pids["server/0"], signal.SIGKILL)
    assert "error: worker server/0 failed: LOST: no answer for" in run.output
    assert "warning: could not" not in run.output
    assert run.summary()["workers"]["server/0"]["status"] == "LOST"
    assert wait_no_active_jobs(run.trial) == []
    assert [worker for worker, pid in pids.items() if alive(pid)] == []


@pytest.mark.usefixtures("slurm_cluster")
def test_a_hung_worker_is_killed_and_relaunched_as_its_own_job(tmp_path: Path) -> None:
    run = ControllerRun(tmp_path, *SLURM, "workers.producer.config.interval_s=0.2", "workers.server.restart=on_failure",
                        "workers.server.restart_backoff_s=0", "timeouts.lost_after_s=2")
    run.wait_for_output("workers RUNNING")
    hung = run.worker_pids()["server/0"]
    os.kill(hung, signal.SIGSTOP)
    try:
        assert run.wait(timeout=90) == 0, run.output
    finally:
        if alive(hung):
            os.kill(hung, signal.SIGKILL)
    assert "worker server/0 failed (LOST: no answer for" in run.output and "restarting it (1/3)" in run.output
    assert f"zrl-echo-{run.trial}-server-0" in [line.split()[0] for line in trial_jobs(run.trial, active_only=False)]
    assert run.summary()["workers"]["consumer/0"]["last"]["stats"]["distinct"] == 400
    assert wait_no_active_jobs(run.trial) == []


@pytest.mark.usefixtures("slurm_cluster")
def test_jobs_end_when_the_controller_is_sigkilled(tmp_path: Path) -> None:
    run = ControllerRun(tmp_path, *SLURM, *ENDLESS,
                        "timeouts.controller_lease_s=4", "timeouts.exit_grace_s=2")
    run.wait_for_output("workers RUNNING")
    run.process.kill()
    run.process.wait()
    try:
        assert wait_no_active_jobs(run.trial, timeout=30) == []
    finally:
        jobs = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, timeout=30).stdout
        left = [line.split()[0] for line in jobs.splitlines() if f"zrl-echo-{run.trial}-" in line]
        if left:
            subprocess.run(["scancel", *left], timeout=30)
    log = (run.run_dir / "logs" / "server-0.log").read_text()
    assert "lease" in log and "has lapsed; exiting" in log


@pytest.mark.redis
@pytest.mark.usefixtures("slurm_cluster")
def test_a_suspended_job_is_waited_for_not_lost(tmp_path: Path, redis_server) -> None:
    # Suspended longer than lost_after_s and the keepalive TTL: its names lapse and come back on resume.
    run = ControllerRun(tmp_path, *SLURM, f"name_resolve={redis_server.url}", "workers.producer.config.interval_s=0.2",
                        "timeouts.lost_after_s=2", "timeouts.keepalive_ttl_s=1")
    run.wait_for_output("workers RUNNING")
    jobs = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, timeout=30).stdout
    server_job = next(line.split()[0] for line in jobs.splitlines() if line.endswith(f"-{run.trial}-server"))
    subprocess.run(["scontrol", "suspend", server_job], check=True, timeout=30)
    try:
        time.sleep(4)
        assert run.process.poll() is None, run.output
    finally:
        subprocess.run(["scontrol", "resume", server_job], timeout=30)
    assert run.wait() == 0, run.output
    check_counts(run.summary(), 2, 200)
    assert wait_no_active_jobs(run.trial) == []


@pytest.mark.usefixtures("slurm_cluster")
def test_a_requeued_job_is_followed_not_relaunched(tmp_path: Path) -> None:
    # As after a preemption: Slurm runs the server's job again under the same id; a relaunch would duplicate it.
    run = ControllerRun(tmp_path, *SLURM, "workers.producer.config.interval_s=0.2", "workers.server.restart=on_failure")
    run.wait_for_output("workers RUNNING")
    jobs = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, timeout=30).stdout
    server_job = next(line.split()[0] for line in jobs.splitlines() if line.endswith(f"-{run.trial}-server"))
    subprocess.run(["scontrol", "requeue", server_job], check=True, timeout=30)
    deadline = time.monotonic() + 30
    while "PENDING" not in subprocess.run(["squeue", "-h", "-j", server_job, "-o", "%T"], capture_output=True,
                                          text=True, timeout=30).stdout and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(8)  # Slurm refuses to start a requeued job again while its first run is still being cleaned up
    subprocess.run(["scontrol", "update", f"JobId={server_job}", "StartTime=now"], timeout=30)
    assert run.wait(timeout=120) == 0, run.output
    assert "worker server/0 was requeued by the scheduler" in run.output
    assert "restarting it" not in run.output
    assert [line.split()[0] for line in trial_jobs(run.trial, active_only=False)].count(
        f"zrl-echo-{run.trial}-server") == 1
    log = (run.run_dir / "logs" / "server-0.log").read_text()
    assert log.count("registered control address") == 2 and log.count("started") == 2
    assert run.summary()["workers"]["consumer/0"]["last"]["stats"]["distinct"] == 400
    assert wait_no_active_jobs(run.trial) == []


@pytest.mark.usefixtures("slurm_cluster")
def test_submit_runs_the_controller_itself_as_a_slurm_job(tmp_path: Path) -> None:
    trial = "submitted"
    result = subprocess.run(
        [sys.executable, "-m", "zrl.controller", str(ECHO), *SLURM, f"trial={trial}", f"run_root={tmp_path / 'runs'}",
         "--submit"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    match = re.fullmatch(r"submitted controller job (\d+); log: (\S+)\n", result.stdout)
    assert match, result.stdout
    log_path = Path(match[2])
    assert log_path == tmp_path / "runs" / "echo" / trial / f"controller-{match[1]}.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and subprocess.run(
            ["squeue", "-h", "-j", match[1]], capture_output=True, text=True, timeout=30).stdout.strip():
        time.sleep(0.3)
    assert f"experiment echo/{trial} done in" in log_path.read_text()
    state = subprocess.run(["squeue", "-h", "-t", "all", "-j", match[1], "-o", "%j %T"], capture_output=True,
                           text=True, timeout=30).stdout.strip()
    assert state == f"zrl-echo-{trial}-controller COMPLETED"
    assert wait_no_active_jobs(trial) == []


def test_memory_name_service_with_slurm_is_refused_with_a_hint(tmp_path: Path) -> None:
    run = ControllerRun(tmp_path, "scheduler=slurm", "name_resolve=memory://")
    assert run.wait() == 2
    assert "memory:// lives inside one process" in run.output
    assert "file:///dir on a filesystem that all nodes share, or redis://host:port/db" in run.output
    assert not run.run_dir.exists()


def test_dry_run_prints_the_sbatch_scripts_and_submits_nothing(tmp_path: Path) -> None:
    run = ControllerRun(tmp_path, "scheduler=slurm", "slurm.partition=gpu", "slurm.time_limit=01:00:00", "--dry-run")
    assert run.wait() == 0, run.output
    for group in ("server", "consumer", "producer"):
        assert f"#SBATCH --job-name=zrl-echo-{run.trial}-{group}" in run.output
    assert "#SBATCH --ntasks=2" in run.output and "#SBATCH --partition=gpu" in run.output
    assert "#SBATCH --time=01:00:00" in run.output
    assert not (run.run_dir / "slurm").exists()
