"""Checkpoints in the real TreePO experiment: a trainer killed mid-run is relaunched and continues from its last
checkpoint, and a stopped trial resumed with `--resume` trains the remaining steps, its rollout worker continuing
its shard exactly at an epoch boundary. Both runs must account for every trajectory."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from test_treepo_e2e import RUN_TIMEOUT_S, TreepoRun

pytestmark = pytest.mark.slow

STEPS = 8
# 8 steps of 2 trees of 4 trajectories, a checkpoint every 2 steps, an evaluation every 4 versions.
SHORT = (f"total_steps={STEPS}", "save_every=2", "eval_every=4", "prompts_per_step=2", "tree.width=4",
         "heldout.count=20")


def wait_for_checkpoint(run: TreepoRun, step: int, timeout: float = RUN_TIMEOUT_S) -> int:
    """The step of the newest checkpoint once it is at least `step`."""
    pointer = run.run_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert run.process.poll() is None, f"the run ended early:\n{run.output}\n{run.log_tails()}"
        if pointer.is_file() and int(pointer.read_text()) >= step:
            return int(pointer.read_text())
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint of step {step} within {timeout} s:\n{run.output}\n{run.log_tails()}")


def check_whole_trial(run: TreepoRun, resumed_from: int) -> dict:
    """What a trial that was resumed once must show when it has finished; returns summary.json."""
    code = run.wait()
    assert code == 0, f"exit code {code}; output:\n{run.output}\n{run.log_tails()}"
    summary = run.summary()
    # Every step is recorded; those trained again after the checkpoint keep the record of the run that went on.
    lines = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    resumes = [r for r in lines if r["kind"] == "resume"]
    assert [r["step"] for r in resumes] == [resumed_from], resumes
    after_resume = lines[lines.index(resumes[0]):]
    train = {r["step"]: r for r in lines if r["kind"] == "train"}
    assert sorted(train) == list(range(1, STEPS + 1))
    assert [r["step"] for r in after_resume if r["kind"] == "train"] == list(range(resumed_from + 1, STEPS + 1))
    assert all("time_checkpoint_s" in r for r in train.values())
    # The resumed weights were published as the version after the newest one, and versions counted on from there.
    version = resumes[0]["version"]
    assert version > resumed_from and train[STEPS]["version"] == version + STEPS - resumed_from
    paramdb = run.run_dir / "policy"
    assert (paramdb / "tags" / "final").read_text().strip() == str(train[STEPS]["version"])
    workers = summary["workers"]
    assert workers["policy/0"]["last"]["stats"]["version"] == train[STEPS]["version"]
    assert str(train[STEPS]["version"]) in workers["evaluator/0"]["last"]["stats"]["evaluated"]
    trainer = workers["trainer/0"]["last"]["stats"]
    assert trainer["step"] == STEPS and trainer["resumed_from"] == resumed_from
    assert f"resumed from step {resumed_from} " in (run.run_dir / "logs" / "trainer-0.log").read_text()
    # Every trajectory produced is accounted for, those the stopped trainer took with it included.
    accounting = summary["sample_accounting"]
    assert accounting["balanced"] is True, accounting
    assert accounting["trained"] == sum(r["trajectories"] for r in train.values())
    assert accounting["produced"] == (accounting["trained"] + accounting["dropped_stale"] + accounting["lost"]
                                      + accounting["dropped_dynamic"] + accounting["in_flight_at_stop"])
    assert accounting["produced"] == workers["rollout/0"]["last"]["stats"]["trajectories_posted"]
    assert "(balanced)" in run.output and (run.run_dir / "learning_curve.png").is_file()
    assert f"training: {STEPS} steps in" in run.output
    assert run.worker_pids(timeout=30) == {}
    return summary


@pytest.mark.timeout(RUN_TIMEOUT_S + 120)
def test_a_killed_trainer_is_relaunched_and_continues_from_its_last_checkpoint(tmp_path: Path):
    run = TreepoRun(tmp_path, *SHORT, "workers.trainer.restart=on_failure", "workers.trainer.restart_backoff_s=0.2")
    checkpoint = wait_for_checkpoint(run, 2)
    os.kill(run.worker_pids()["trainer/0"], signal.SIGKILL)
    summary = check_whole_trial(run, resumed_from=checkpoint)
    assert summary["workers"]["trainer/0"]["restarts"] == 1
    assert "worker trainer/0 failed" in run.output and "restarting it (1/3)" in run.output


@pytest.mark.timeout(2 * RUN_TIMEOUT_S + 120)
def test_a_stopped_trial_resumes_at_an_epoch_boundary_and_trains_the_remaining_steps(tmp_path: Path):
    # A shard of two problems, trees started two at a time and none dropped: the rollout worker stops exactly at the
    # end of an epoch.
    data = ("workers.rollout.config.problems.count=2", "max_staleness=16", "workers.rollout.config.trees_in_flight=64")
    first = TreepoRun(tmp_path, *SHORT, *data)
    checkpoint = wait_for_checkpoint(first, 2)
    first.process.send_signal(signal.SIGTERM)
    assert first.wait() == 130, first.output
    assert first.worker_pids(timeout=30) == {}
    checkpoint = int((first.run_dir / "checkpoints" / "latest").read_text())
    assert checkpoint < STEPS, "the run ended before it was stopped; nothing is left to resume"
    shard = json.loads((first.run_dir / "shards" / "rollout-0.json").read_text())
    position = shard["position"]
    assert position > 0 and position % 2 == 0 and shard["shard_size"] == 2, shard
    before = (first.run_dir / "metrics.jsonl").read_text()

    resumed = TreepoRun(tmp_path, *SHORT, *data, "--resume", trial=first.trial)
    check_whole_trial(resumed, resumed_from=checkpoint)
    assert f"resuming treepo_math/{first.trial} in" in resumed.output
    assert (resumed.run_dir / "metrics.jsonl").read_text().startswith(before)  # appended to
    rollout_log = (resumed.run_dir / "logs" / "rollout-0.log").read_text()
    assert re.search(rf"continuing the shard at position {position} \(epoch {position // 2}, offset 0 of 2\); "
                     rf"{shard['trees_posted']} trees were posted before", rollout_log), rollout_log[-3000:]
