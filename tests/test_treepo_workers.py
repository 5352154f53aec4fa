"""Pieces of the TreePO workers that need no running experiment: sharding, throttling, tokenizer loading."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from fixtures_tiny import tiny_model_dir  # noqa: F401

from zrl.nameresolve import make_name_resolver, names
from zrl.rl.problem import Problem
from zrl.rl.shard import ShardCursor
from zrl.rl.synthetic import generate_problems
from zrl.rl.tree import Trajectory, TreeResult, TreeStats
from zrl.workers.messages import TreeSample
from zrl.workers.rollout import load_tokenizer_and_eos
from zrl.workers.treepo_common import load_problems, load_tokenizer, model_path, open_paramdb
from zrl.workers.treepo_config import ModelSource, ProblemSource


def problems(n: int) -> list[Problem]:
    return [Problem(f"p{i}", f"prompt {i}", str(i)) for i in range(n)]


def taken(cursor: ShardCursor, count: int) -> list[tuple[int, Problem]]:
    return [cursor.next() for _ in range(count)]


def test_shards_split_the_dataset_and_every_epoch_covers_a_shard_once_in_a_new_order():
    data = problems(10)
    firsts = []
    for index in range(3):
        cursor = ShardCursor(data, index, 3, seed=7)
        epoch0 = taken(cursor, len(data[index::3]))
        epoch1 = taken(cursor, len(data[index::3]))
        assert {e for e, _ in epoch0} == {0} and {e for e, _ in epoch1} == {1}
        assert sorted(p.uid for _, p in epoch0) == sorted(p.uid for p in data[index::3])
        assert sorted(p.uid for _, p in epoch1) == sorted(p.uid for p in data[index::3])
        firsts.append({p.uid for _, p in epoch0})
    assert set.union(*firsts) == {p.uid for p in data} and sum(map(len, firsts)) == len(data)
    # Seeded: the same worker sees the same order again, another seed gives another order.
    again = taken(ShardCursor(data, 0, 1, seed=7), 20)
    assert again == taken(ShardCursor(data, 0, 1, seed=7), 20)
    assert again != taken(ShardCursor(data, 0, 1, seed=8), 20)
    with pytest.raises(ValueError, match="rollout worker 3 of 4 gets no problems from a dataset of 3"):
        ShardCursor(problems(3), 3, 4, seed=0)


@pytest.mark.parametrize("position", [0, 3, 4, 5, 8, 11])
def test_a_cursor_put_back_at_a_position_continues_as_the_one_that_walked_there(position: int):
    data = problems(12)  # worker 1 of 3: a shard of 4, so 4 and 8 are epoch boundaries
    walked = ShardCursor(data, 1, 3, seed=7)
    taken(walked, position)
    jumped = ShardCursor(data, 1, 3, seed=7, position=position)
    assert (jumped.epoch, jumped.offset) == (position // 4, position % 4)
    assert taken(jumped, 9) == taken(walked, 9)
    assert jumped.position == walked.position == position + 9


def test_a_far_position_is_reached_without_walking_there():
    data = problems(1000)
    far = ShardCursor(data, 0, 1, seed=1, position=10**15 + 7)
    epoch, problem = far.next()
    assert epoch == 10**12 and far.position == 10**15 + 8
    with pytest.raises(ValueError, match="shard position must be an int >= 0"):
        ShardCursor(data, 0, 1, seed=1, position=-1)


def test_the_tiny_model_tokenizer_keeps_every_character(tiny_model_dir):  # noqa: F811
    tokenizer = load_tokenizer(Path(tiny_model_dir))
    text = "Compute 3+4*2.\n4*2=8, so 3+8\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tokenizer.decode(ids) == text
    _, eos = load_tokenizer_and_eos(Path(tiny_model_dir))
    assert eos == [tokenizer.eos_token_id]


def test_problem_sources_and_model_paths_fail_clearly(tmp_path: Path):
    synthetic = load_problems(ProblemSource(split="heldout", count=5, seed=1))
    assert synthetic == generate_problems("heldout", 5, seed=1)
    with pytest.raises(ValueError, match="needs problems.file.path"):
        load_problems(ProblemSource(kind="file"))
    with pytest.raises(FileNotFoundError, match="is not a model directory"):
        model_path(ModelSource(path=str(tmp_path)))


def test_the_parameter_db_lives_in_the_run_directory_by_default(tmp_path: Path):
    from zrl.workers.base import WorkerContext

    run = tmp_path / "runs" / "exp" / "t1"
    db = open_paramdb(ModelSource(), WorkerContext("exp", "t1", "trainer", 0, run_dir=str(run)), None)
    assert db.model_dir("policy") == run.resolve() / "policy"
    elsewhere = open_paramdb(ModelSource(paramdb_root=str(tmp_path / "p")), WorkerContext("exp", "t1", "x", 0), None)
    assert elsewhere.model_dir("policy") == tmp_path / "p" / "exp" / "t1" / "policy"


def test_a_tree_whose_scoring_finishes_while_posting_is_not_lost():
    from concurrent.futures import Future

    from zrl.workers.rollout import RolloutWorker
    from zrl.workers.treepo_config import RolloutConfig

    def sample(uid: str) -> TreeSample:
        trajectory = Trajectory(uid, [1], [2], [-0.5], [0], [1], [0], "finished", reward=1.0)
        return TreeSample(TreeResult(uid, [trajectory], TreeStats()))

    class FinishesOnSecondLook(Future):
        looks = 0

        def done(self) -> bool:
            self.looks += 1
            if self.looks == 2:
                self.set_result(sample("late"))
            return super().done()

    class Producer:
        posted: list = []

        def post(self, item: dict) -> None:
            self.posted.append(item["tree"]["uid"])

        def flush(self) -> None:
            pass

    worker = RolloutWorker.__new__(RolloutWorker)
    worker.config = RolloutConfig()
    worker.producer = Producer()
    worker.counts = {"trees_posted": 0, "trajectories_posted": 0}
    early = Future()
    early.set_result(sample("early"))
    worker.scored = [early, FinishesOnSecondLook()]
    posted = worker._post_scored() + worker._post_scored()
    assert posted == 2 and sorted(worker.producer.posted) == ["early", "late"] and worker.scored == []


class Versions:
    """The parameter DB as the rollout worker's throttle sees it: the trainer's newest version."""

    def __init__(self) -> None:
        self.newest = 0

    def newer_version(self, model: str, than: int) -> int | None:
        return self.newest if self.newest > than else None


def throttled_rollout_worker(resolver, tmp_path: Path, **config):
    """A rollout worker with its throttle and shard, but no streams, engine or verifier."""
    from zrl.rl.tree import TreeSampler
    from zrl.workers.base import WorkerContext
    from zrl.workers.rollout import RolloutWorker
    from zrl.workers.treepo_config import RolloutConfig

    class Tokenizer:
        def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
            return {"input_ids": [ord(c) % 50 + 1 for c in text]}

    worker = RolloutWorker(WorkerContext("exp", "t", "rollout", 0, run_dir=str(tmp_path)), resolver)
    worker.config = RolloutConfig(**config)
    worker.tokenizer = Tokenizer()
    worker.sampler = TreeSampler(worker.config.tree, 0, lambda ids: "")
    worker.cursor = ShardCursor(problems(10), 0, 1, seed=0)
    worker.trees, worker.scored = {}, []
    worker.counts = {"trees_posted": 0, "trajectories_posted": 0, "requests": 0, "epoch": 0, "throttled_polls": 0}
    worker.restored_produced = 0
    worker.trainer_version, worker.trees_dropped, worker.next_version_check = 0, 0, 0.0
    worker.drops_key = names.sample_drops("exp", "t", "trees", "rollout/0")
    worker.reset_key = names.sample_stream_reset("exp", "t", "trees")
    worker.counting_since = None
    worker.base_version = worker.posted_at_base = worker.dropped_at_base = 0
    worker.paramdb = Versions()
    return worker


def post_all(worker) -> None:
    """The trees in progress finish and are posted."""
    worker.counts["trees_posted"] += worker.sampler.in_progress
    worker.sampler = type(worker.sampler)(worker.config.tree, 0, lambda ids: "")


def check(worker) -> None:
    worker.next_version_check = 0.0
    worker._check_trainer_version()


def test_trees_the_trainer_dropped_are_replaced_not_counted_against_the_budget(tmp_path: Path):
    """Lockstep (max_staleness=0): two trees posted for version 0 were dropped as stale, so the rollout worker
    must start new ones instead of waiting forever for a version that needs them."""
    resolver = make_name_resolver(f"memory://{tmp_path.name}")
    worker = throttled_rollout_worker(resolver, tmp_path, max_staleness=0, prompts_per_step=2)
    check(worker)
    assert worker._start_trees() == 2
    post_all(worker)
    assert worker._start_trees() == 0  # the budget of version 0 is used up by the two trees posted
    resolver.add(names.sample_drops("exp", "t", "trees", "rollout/0"), "2", replace=True)
    check(worker)
    assert worker.trees_dropped == 2
    assert worker._start_trees() == 2 and worker.sampler.in_progress == 2


def test_a_trainer_resumed_from_a_checkpoint_restarts_the_count_of_trees_it_will_use(tmp_path: Path):
    """The trees posted to a trainer that died are gone with it: counted against the budget, they would hold the
    rollout worker back while the resumed trainer waits for trees, for ever."""
    resolver = make_name_resolver(f"memory://{tmp_path.name}")
    worker = throttled_rollout_worker(resolver, tmp_path, max_staleness=1, prompts_per_step=2)
    drops = names.sample_drops("exp", "t", "trees", "rollout/0")
    for version in range(4):
        worker.paramdb.newest = version
        check(worker)
        worker._start_trees()
        post_all(worker)
    resolver.add(drops, "1", replace=True)
    check(worker)
    assert worker.counts["trees_posted"] == 10 and worker._start_trees() == 1  # (3 + 1 + 1) * 2 - 10 + 1 dropped
    post_all(worker)
    # The trainer dies at version 3, having trained up to 2 of the trees posted; it resumes from a checkpoint and
    # publishes the resumed weights as version 4. It clears the drop counts, then announces the reset.
    resolver.delete(drops)
    resolver.add(names.sample_stream_reset("exp", "t", "trees"), "4", replace=True)
    worker.paramdb.newest = 4
    check(worker)
    assert worker._start_trees() == 4  # (max_staleness + 1) * prompts_per_step, as at the start of a run
    post_all(worker)
    worker.paramdb.newest = 5
    resolver.add(drops, "1", replace=True)
    check(worker)
    assert worker._start_trees() == 3


def test_a_relaunched_rollout_worker_continues_its_shard_and_a_resumed_trial_its_counters(tmp_path: Path):
    resolver = make_name_resolver(f"memory://{tmp_path.name}")
    first = throttled_rollout_worker(resolver, tmp_path, prompts_per_step=2)
    first.shard_state = tmp_path / "shards" / "rollout-0.json"
    first.run_id = "host:1"
    check(first)
    first._start_trees()
    post_all(first)
    first.counts["trajectories_posted"] = 96
    first._save_shard_state()
    assert first.cursor.position == 6

    def relaunched(run_id: str):
        worker = throttled_rollout_worker(resolver, tmp_path, prompts_per_step=2)
        worker.shard_state, worker.run_id = first.shard_state, run_id
        worker._restore_shard_state()
        return worker

    same_run = relaunched("host:1")
    assert same_run.cursor.position == 6 and same_run.counts["trees_posted"] == 0
    assert same_run.cursor.next() == first.cursor.next()
    resumed = relaunched("host:2")
    assert resumed.cursor.position == 6
    assert (resumed.counts["trees_posted"], resumed.counts["trajectories_posted"]) == (6, 96)
    assert resumed._restored() == {"restored": {"produced": 96}} and same_run._restored() == {}
    # A shard that changed (another worker count) is started from its beginning, with a warning.
    other = throttled_rollout_worker(resolver, tmp_path, prompts_per_step=2)
    other.context = dataclasses.replace(other.context, group_size=2)
    other.cursor = ShardCursor(problems(10), 0, 2, seed=0)
    other.shard_state, other.run_id = first.shard_state, "host:1"
    other._restore_shard_state()
    assert other.cursor.position == 0
