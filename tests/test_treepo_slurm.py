"""A short TreePO run through `python -m zrl.controller experiments/treepo_math.py scheduler=slurm` on a real
single-node Slurm cluster (the one of tests/test_slurm.py, brought up by its session fixture when needed)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from test_slurm import slurm_cluster  # noqa: F401 - the session fixture, shared with test_slurm.py
from test_treepo_e2e import RUN_TIMEOUT_S, SHORT, STEPS, TreepoRun, check_completed_run

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

GROUPS = ("evaluator", "policy", "rollout", "trainer")


def trial_jobs(trial: str, active_only: bool) -> list[str]:
    """'name state' of this trial's Slurm jobs: every one squeue still shows, or only pending/running/completing."""
    argv = ["squeue", "-h", "-o", "%j %T"] + ([] if active_only else ["-t", "all"])
    listed = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()
    return sorted(line for line in listed if line.startswith(f"zrl-treepo_math-{trial}-"))


def wait_no_active_jobs(trial: str, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := trial_jobs(trial, active_only=True)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.mark.timeout(RUN_TIMEOUT_S + 180)
@pytest.mark.usefixtures("slurm_cluster")
def test_short_treepo_run_through_slurm(tmp_path: Path) -> None:
    run = TreepoRun(tmp_path, *SHORT, "scheduler=slurm", "slurm.poll_interval_s=0.5")
    try:
        summary = check_completed_run(run)
    finally:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()
        left = wait_no_active_jobs(run.trial)
    assert left == [], f"jobs still active after the run: {left}"
    assert summary["exit_code"] == 0
    # One job per group, all of them through Slurm, and every worker's log in the run directory.
    jobs = trial_jobs(run.trial, active_only=False)
    assert [line.split()[0] for line in jobs] == [f"zrl-treepo_math-{run.trial}-{group}" for group in GROUPS], jobs
    for group in ("trainer", "evaluator"):
        assert f"zrl-treepo_math-{run.trial}-{group} COMPLETED" in jobs, jobs
    for group in GROUPS:
        assert (run.run_dir / "slurm" / f"zrl-treepo_math-{run.trial}-{group}.sbatch").is_file()
        assert "registered control address" in (run.run_dir / "logs" / f"{group}-0.log").read_text()
    assert summary["workers"]["trainer/0"]["last"]["stats"]["step"] == STEPS
