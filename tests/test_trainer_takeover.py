"""A trainer worker that finds the checkpoints of an earlier trainer of its trial: what it restores, which version it
publishes, what it counts as lost and what it tells the rollout workers. In-process, with the real parameter DB,
name service (memory) and sample-stream socket; the steps themselves are stood in for."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fixtures_tiny import tiny_model_dir  # noqa: F401

from zrl.nameresolve import make_name_resolver, names
from zrl.rl.tree.trajectory import Trajectory, TreeResult, TreeStats
from zrl.workers.base import WorkerContext
from zrl.workers.messages import TreeSample
from zrl.workers.trainer import ReceivedTree, TrainerWorker
from zrl.workers.treepo_config import ModelSource, TrainerConfig


@pytest.fixture
def start_trainer(tmp_path: Path, tiny_model_dir):  # noqa: F811
    resolver = make_name_resolver(f"memory://{tmp_path.name}")
    context = WorkerContext("exp", "t1", "trainer", 0, run_dir=str(tmp_path / "runs" / "exp" / "t1"))
    started = []

    def start(total_steps: int) -> TrainerWorker:
        worker = TrainerWorker(context, resolver)
        config = TrainerConfig(model=ModelSource(path=str(tiny_model_dir)), total_steps=total_steps, save_every=2)
        worker._configure(config)
        worker.config = config
        started.append(worker)
        return worker

    yield start, resolver
    for worker in started:
        worker._close()


def step_without_data(worker: TrainerWorker) -> None:
    """What a step changes, without trees: the weights move, step and version count up, the version is pushed."""
    with torch.no_grad():
        next(worker.model.parameters()).add_(0.01)
    worker.step += 1
    worker.version += 1
    worker._push()


def test_a_trainer_continues_from_the_checkpoint_of_the_one_before(start_trainer, tmp_path: Path):
    start, resolver = start_trainer
    first = start(total_steps=3)
    assert first.resumed_from is None and first.step == first.version == 0  # a fresh trial
    assert first.step_config.optimizer.decay_steps == 3  # a learning-rate decay ends at the run's last step
    step_without_data(first)
    step_without_data(first)
    first.accounting = replace(first.accounting, received=40, trained=16, dropped_stale=8)
    first.buffer.extend([SimpleNamespace(size=8), SimpleNamespace(size=8)])
    first._save_checkpoint()
    saved = next(first.model.parameters()).detach().clone()
    # It goes on past the checkpoint: one more step (the last: version 3 is tagged final), 16 more trajectories
    # received, a tree of rollout/0 dropped; then it stops.
    step_without_data(first)
    first.accounting.received = 56
    first.checkpoints.joinpath("received.json").write_text(json.dumps({"received": 56, "garbage": 1}))
    drops = names.sample_drops("exp", "t1", "trees", "rollout/0")
    resolver.add(drops, "1", replace=True)
    paramdb = first.paramdb
    assert paramdb.tags("policy") == {"final": 3}

    # The trial goes on with more steps: the next trainer takes over from the checkpoint of step 2.
    second = start(total_steps=4)
    assert (second.step, second.resumed_from, second.version) == (2, 2, 4)
    assert torch.equal(next(second.model.parameters()), saved)
    assert paramdb.list_versions("policy") == [1, 2, 3, 4] and paramdb.latest_version("policy") == 4
    assert torch.equal(paramdb.get("policy", 4)[next(iter(second.model.state_dict()))], saved)
    assert paramdb.tags("policy") == {}  # version 3 is no longer the end of the run
    # The 16 trajectories in the checkpoint's buffer and the 16 received after it were never trained.
    assert second.accounting.as_dict() == {"received": 56, "trained": 16, "dropped_stale": 8, "dropped_dynamic": 0,
                                           "garbage": 1, "lost": 32}
    stats = second._stats()["accounting"]
    assert stats["restored"] == {**second.accounting.as_dict(), "buffered": 0} and stats["buffered"] == 0
    assert resolver.find_subtree(names.sample_drops_root("exp", "t1", "trees")) == []
    assert resolver.get(names.sample_stream_reset("exp", "t1", "trees")) == "4"
    records = [json.loads(line) for line in (tmp_path / "runs/exp/t1/metrics.jsonl").read_text().splitlines()]
    assert [r for r in records if r["kind"] == "resume"][0] | {"time": 0} == {
        "kind": "resume", "step": 2, "time": 0, "version": 4, "checkpoint_version": 2, "lost": 32}
    assert second._poll().done is False

    # A trial whose last checkpoint is its last step has nothing left to do and publishes nothing.
    step_without_data(second)
    step_without_data(second)
    second._save_checkpoint()
    third = start(total_steps=4)
    assert (third.step, third.version) == (4, 6) and third._poll().done is True
    assert paramdb.list_versions("policy")[-1] == 6 and paramdb.tags("policy") == {"final": 6}


def received_tree(uid: str, samples: int = 2) -> ReceivedTree:
    trajectories = [Trajectory(uid=uid, prompt_ids=[5, 6, 7], response_ids=[8, 9, 10], logprobs=[-1.0] * 3,
                               segment_ids=[index], segment_tokens=[3], versions=[0], status="finished",
                               reward=1.0 if index % 2 else -1.0, tree_id=uid) for index in range(samples)]
    tree = TreeResult(uid, trajectories, TreeStats(decoded_tokens=3 * samples))
    return ReceivedTree(TreeSample(tree, producer="rollout/0"))


def test_a_status_served_while_a_step_pushes_counts_its_batch_once(start_trainer):
    """The control thread may answer a status at any moment of a step, and the controller's report keeps the
    last answer: received must equal trained + buffered + dropped in every one, here the one served while the
    step's weights are being pushed (after the batch counts as trained)."""
    worker = start_trainer[0](total_steps=5)
    worker.config = replace(worker.config, prompts_per_step=2)
    for index in range(3):
        worker.buffer.append(received_tree(f"p{index}"))
    worker.accounting.received = 6
    seen = []
    push = worker._push

    def push_and_look() -> float:
        seen.append(worker._stats()["accounting"])
        return push()

    worker._push = push_and_look
    worker._poll()
    assert worker.step == 1 and len(seen) == 1
    assert (seen[0]["trained"], seen[0]["buffered"]) == (4, 2)
    after = worker._stats()["accounting"]
    assert after["received"] == after["trained"] + after["buffered"] == 6
