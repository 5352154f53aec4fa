"""Trainers as a real torch.distributed group (gloo, one process per rank, rendezvous through a file name
service): they keep identical weights, take the step one trainer takes on the whole batch, and fail at once, with
an error that says why, when a peer is gone; and the TreePO experiment with two trainers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_step import PAD, batch, small_model
from test_treepo_e2e import RUN_TIMEOUT_S, SHORT, TreepoRun, check_completed_run

from zrl.nameresolve import make_name_resolver
from zrl.rl.train_step import OptimizerConfig, StepConfig, make_optimizer, train_step
from zrl.workers.trainer_group import TrainerGroupError, join_trainer_group

ROOT = Path(__file__).resolve().parent.parent
RANK_SCRIPT = Path(__file__).resolve().parent / "trainer_group_rank.py"
STEPS = 3
# No clipping and a plain learning rate, so a gradient off by any factor shows in the weights too; micro-batches
# small enough that the ranks run different numbers of them.
STEP_CONFIG = StepConfig(OptimizerConfig(lr=1e-2, warmup_steps=0, grad_clip=0.0), micro_batch_tokens=24)
UNCOMPARED = ("time_train_s", "micro_batches")
"""Metrics that differ with the number of trainers: a step's time, and micro-batches (each rank runs its own)."""


def run_ranks(tmp_path: Path, world_size: int, *flags: str, timeout: float = 240) -> list[subprocess.CompletedProcess]:
    url = f"file://{tmp_path / 'names'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    processes = [subprocess.Popen([sys.executable, str(RANK_SCRIPT), url, str(rank), str(world_size), str(STEPS),
                                   str(tmp_path), *flags], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for rank in range(world_size)]
    done = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(process.args, process.returncode, output))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return done


def single_trainer_steps() -> tuple[torch.nn.Module, list[dict]]:
    """What one trainer does with the same global batch."""
    torch.set_num_threads(1)
    model = small_model()
    optimizer, scheduler = make_optimizer(model, STEP_CONFIG.optimizer)
    trajectories = batch(model, shared_first_segment=True)
    records = [train_step(model, optimizer, scheduler, trajectories, STEP_CONFIG, PAD, on_policy_version=step)
               for step in range(STEPS)]
    return model, records


@pytest.mark.timeout(300)
def test_two_gloo_trainers_keep_identical_weights_and_take_the_single_trainer_step(tmp_path: Path):
    results = run_ranks(tmp_path, 2)
    for rank, result in enumerate(results):
        assert result.returncode == 0, f"rank {rank} exited {result.returncode}:\n{result.stdout}"
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    # Both ranks hold the very same weights (and gradients) after every step: they took identical steps.
    assert ranks[0].keys() == ranks[1].keys()
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    # Each rank trained on its share of the rows, but reports the figures of the whole batch.
    for step in range(STEPS):
        assert records[0][step].keys() == records[1][step].keys()
        for key in records[0][step].keys() - set(UNCOMPARED):
            assert records[0][step][key] == pytest.approx(records[1][step][key], rel=1e-9), (step, key)

    model, single = single_trainer_steps()
    assert "logprob_mismatch_on_policy" in single[0] and single[0]["grad_norm"] > 0
    for step in range(STEPS):
        assert records[0][step].keys() == single[step].keys()
        for key in single[step].keys() - set(UNCOMPARED):
            assert records[0][step][key] == pytest.approx(single[step][key], rel=1e-4, abs=1e-6), (step, key)
    # The trees were packed, and the ranks split them: between them they ran fewer micro-batches than two
    # trainers that each ran the whole batch.
    assert single[0]["packed_trees"] == records[0][0]["packed_trees"] == 1.0
    assert 2 <= records[0][0]["micro_batches"] < 2 * single[0]["micro_batches"]
    moved = 0.0
    start = small_model()
    for name, param in model.named_parameters():
        assert torch.allclose(ranks[0][f"weight.{name}"], param.detach(), atol=5e-5, rtol=1e-4), name
        assert torch.allclose(ranks[0][f"grad.{name}"], param.grad, atol=1e-6, rtol=1e-4), name
        moved = max(moved, float((param.detach() - dict(start.named_parameters())[name].detach()).abs().max()))
    assert moved > 1e-3  # the steps changed the weights by far more than the tolerance


@pytest.mark.timeout(300)
def test_a_trainer_whose_peer_died_fails_at_once_naming_the_cause(tmp_path: Path):
    results = run_ranks(tmp_path, 2, "--die-after-join")
    assert [r.returncode for r in results] == [0, 0], [r.stdout for r in results]
    outcome = json.loads((tmp_path / "rank0.json").read_text())
    assert "trainer rank 0 of 2" in outcome["error"] and "a peer trainer died" in outcome["error"], outcome
    assert outcome["after_s"] < 30  # the peer's closed connection, not the 60 s collective timeout


def test_a_trainer_without_rank_0_gives_up_at_the_rendezvous_naming_the_key(tmp_path: Path):
    resolver = make_name_resolver(f"file://{tmp_path / 'names'}")
    started = time.monotonic()
    with pytest.raises(TrainerGroupError, match=r"trainer rank 1 of 2: no rendezvous address under "
                                                r"exp/trial/trainer_ddp/policy/store within 1 s"):
        join_trainer_group(resolver, "exp/trial/trainer_ddp/policy/store", 1, 2, "127.0.0.1", torch.device("cpu"),
                           timeout_s=1.0, keepalive_ttl_s=1.0)
    assert time.monotonic() - started < 10
    resolver.close()



@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 120)
def test_a_short_treepo_run_with_two_trainers_completes_with_balanced_accounting(tmp_path: Path):
    run = TreepoRun(tmp_path, *SHORT, "trainers=2")
    # Each step is trained, pushed and recorded once; every sample is counted once (check_completed_run).
    summary = check_completed_run(run, trainers=2)
    lead, follower = (summary["workers"][f"trainer/{i}"]["last"]["stats"] for i in range(2))
    assert lead["group"] == {"rank": 0, "world_size": 2} and follower["group"] == {"rank": 1, "world_size": 2}
    assert "accounting" not in follower and "headline" not in follower, follower
    assert lead["samples"]["received"] > 0
    logs = run.run_dir / "logs"
    assert "joined the gloo trainer group as rank 1 of 2" in (logs / "trainer-1.log").read_text()
    assert not (run.run_dir / "tensorboard" / "trainer-1").exists()


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 120)
def test_a_treepo_run_whose_second_trainer_dies_fails_and_leaves_no_worker(tmp_path: Path):
    run = TreepoRun(tmp_path, *SHORT, "trainers=2", "total_steps=1000")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (run.run_dir / "metrics.jsonl").exists() or not run.records("train"):
        assert run.process.poll() is None and time.monotonic() < deadline, f"no step trained:\n{run.output}"
        time.sleep(0.5)
    os.kill(run.worker_pids()["trainer/1"], signal.SIGKILL)
    killed = time.monotonic()
    code = run.wait()
    assert code == 1, f"exit code {code}; output:\n{run.output}"
    assert time.monotonic() - killed < 60, run.output  # not the collective timeout (300 s)
    assert "error: worker trainer/" in run.output, run.output
    assert run.worker_pids(timeout=30) == {}
    summary = run.summary()
    assert summary["workers"]["trainer/1"]["status"] != "COMPLETED"
