"""The demo experiment end to end through `python -m zrl.controller ... scheduler=ray` on a real local Ray cluster
(tests/ray_cluster.py): accounting, a SIGKILLed worker, a relaunch, a SIGKILLed controller, placement, secrets."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from ray_cluster import RayCluster, ray_head  # noqa: F401
from test_controller_e2e import ControllerRun, alive, check_counts
from test_two_node_e2e import wait_until

from zrl.streams.control_key_file import control_key_path

ENDLESS = ("workers.producer.config.num_samples=1000000", "workers.producer.config.interval_s=0.05",
           "workers.consumer.config.expected_samples=2000000")


def ray_overrides(cluster: RayCluster) -> tuple[str, ...]:
    return ("scheduler=ray", f"ray.address={cluster.address}", "ray.poll_interval_s=0.2")


def test_demo_through_ray_balances_its_accounting_and_leaves_nothing(tmp_path: Path, ray_head: RayCluster):  # noqa: F811
    run = ControllerRun(tmp_path, *ray_overrides(ray_head))
    try:
        assert run.wait(timeout=120) == 0, run.output
        assert "all 4 workers RUNNING" in run.output and "done in" in run.output
        check_counts(run.summary(), 2, 200)
        for worker in ("server-0", "consumer-0", "producer-0", "producer-1"):
            assert "registered control address" in (run.run_dir / "logs" / f"{worker}.log").read_text()
        assert wait_until(lambda: not run.worker_pids(), 10) is True
        launch_file = run.run_dir / "ray" / "server.0.json"
        assert launch_file.stat().st_mode & 0o777 == 0o600
    finally:
        run.close()


def test_the_control_key_never_enters_rays_files(tmp_path: Path, ray_head: RayCluster):  # noqa: F811
    run = ControllerRun(tmp_path, *ray_overrides(ray_head), *ENDLESS)
    try:
        run.wait_for_output("workers RUNNING", timeout=60)
        key = control_key_path(run.run_dir).read_bytes().strip()
        assert len(key) >= 32
        assert ray_head.files_holding([key]) == []
    finally:
        run.close()


def test_a_sigkilled_worker_fails_the_run_with_its_signal(tmp_path: Path, ray_head: RayCluster):  # noqa: F811
    run = ControllerRun(tmp_path, *ray_overrides(ray_head), *ENDLESS)
    try:
        run.wait_for_output("workers RUNNING", timeout=60)
        pids = run.worker_pids()
        os.kill(pids["server/0"], signal.SIGKILL)
        assert run.wait(timeout=60) == 1, run.output
        assert re.search(r"worker server/0 failed: its process ended \(FAILED: killed by signal 9", run.output), \
            run.output
        assert wait_until(lambda: not [pid for pid in pids.values() if alive(pid)], 15) is True
    finally:
        run.close()


def test_a_sigkilled_worker_is_relaunched_with_restart_on_failure(tmp_path: Path, ray_head: RayCluster):  # noqa: F811
    run = ControllerRun(tmp_path, *ray_overrides(ray_head), "workers.producer.config.interval_s=0.2",
                        "workers.server.restart=on_failure", "workers.server.restart_backoff_s=0")
    try:
        run.wait_for_output("workers RUNNING", timeout=60)
        first = run.worker_pids()["server/0"]
        os.kill(first, signal.SIGKILL)
        assert run.wait(timeout=120) == 0, run.output
        assert "worker server/0 failed (its process ended (FAILED: killed by signal 9" in run.output, run.output
        assert "restarting it (1/3)" in run.output
        assert run.summary()["workers"]["consumer/0"]["last"]["stats"]["distinct"] == 400
    finally:
        run.close()


def test_a_sigkilled_controller_takes_its_workers_with_it(tmp_path: Path, ray_head: RayCluster):  # noqa: F811
    lease_s, grace_s = 6, 3
    run = ControllerRun(tmp_path, *ray_overrides(ray_head), *ENDLESS, f"timeouts.controller_lease_s={lease_s}",
                        f"timeouts.exit_grace_s={grace_s}")
    try:
        run.wait_for_output("workers RUNNING", timeout=60)
        pids = run.worker_pids()
        assert len(pids) == 4
        run.process.kill()
        run.process.wait()
        left = wait_until(lambda: not [pid for pid in pids.values() if alive(pid)], lease_s + grace_s + 20)
        assert left is True, {worker: pid for worker, pid in pids.items() if alive(pid)}
    finally:
        run.close()


def test_placement_by_label_and_an_impossible_one_stays_pending(tmp_path: Path, ray_head: RayCluster):  # noqa: F811
    run = ControllerRun(tmp_path, *ray_overrides(ray_head), "workers.server.ray.labels=zrl-node=head",
                        "workers.consumer.ray.strategy=pack", "timeouts.register_s=5")
    try:
        assert run.wait(timeout=120) == 0, run.output
        check_counts(run.summary(), 2, 200)
    finally:
        run.close()
    stuck = ControllerRun(tmp_path, *ray_overrides(ray_head), "workers.server.ray.labels=zrl-node=nowhere",
                          "timeouts.register_s=5")
    try:
        assert stuck.wait(timeout=90) == 1, stuck.output
        assert "server/0" in stuck.output and "PENDING" in stuck.output, stuck.output
    finally:
        stuck.close()


def test_a_bad_address_is_a_clear_error_before_anything_starts(tmp_path: Path):
    run = ControllerRun(tmp_path, "scheduler=ray", "ray.address=127.0.0.1:9")
    assert run.wait(timeout=60) == 2, run.output
    assert "ray.address=127.0.0.1:9" in run.output and "ray start --head" in run.output, run.output
    assert not run.run_dir.exists()
    malformed = ControllerRun(tmp_path, "scheduler=ray", "ray.address=head-node")
    assert malformed.wait(timeout=60) == 2, malformed.output
    assert "ray.address: 'head-node' is not auto, host:port or ray://host:port" in malformed.output


def test_dry_run_describes_where_each_worker_would_run(tmp_path: Path):
    run = ControllerRun(tmp_path, "scheduler=ray", "ray.address=10.0.0.1:6379", "workers.server.ray.strategy=spread",
                        "--dry-run")
    assert run.wait(timeout=60) == 0, run.output
    assert "ray.address=10.0.0.1:6379" in run.output
    assert re.search(r"server/0: .*zrl\.workers.*\[num_cpus=1 num_gpus=0 memory=\d+ MiB strategy=spread\]",
                     run.output), run.output


pytestmark = pytest.mark.ray
