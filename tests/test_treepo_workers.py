"""Pieces of the TreePO workers that need no running experiment: sharding, payload parsing, tokenizer loading."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from fixtures_tiny import tiny_model_dir  # noqa: F401

from zrl.rl.problem import Problem
from zrl.rl.synthetic import generate_problems
from zrl.workers.policy import request_from_payload
from zrl.workers.rollout import load_tokenizer_and_eos, shard_epochs
from zrl.workers.treepo_common import load_problems, load_tokenizer, model_path, open_paramdb
from zrl.workers.treepo_config import ModelSource, ProblemSource


def problems(n: int) -> list[Problem]:
    return [Problem(f"p{i}", f"prompt {i}", str(i)) for i in range(n)]


def test_shards_split_the_dataset_and_every_epoch_covers_a_shard_once_in_a_new_order():
    data = problems(10)
    firsts = []
    for index in range(3):
        stream = shard_epochs(data, index, 3, seed=7)
        epoch0 = [next(stream) for _ in range(len(data[index::3]))]
        epoch1 = [next(stream) for _ in range(len(data[index::3]))]
        assert {e for e, _ in epoch0} == {0} and {e for e, _ in epoch1} == {1}
        assert sorted(p.uid for _, p in epoch0) == sorted(p.uid for p in data[index::3])
        assert sorted(p.uid for _, p in epoch1) == sorted(p.uid for p in data[index::3])
        firsts.append({p.uid for _, p in epoch0})
    assert set.union(*firsts) == {p.uid for p in data} and sum(map(len, firsts)) == len(data)
    # Seeded: the same worker sees the same order again, another seed gives another order.
    again = list(itertools.islice(shard_epochs(data, 0, 1, seed=7), 20))
    assert again == list(itertools.islice(shard_epochs(data, 0, 1, seed=7), 20))
    assert again != list(itertools.islice(shard_epochs(data, 0, 1, seed=8), 20))
    with pytest.raises(ValueError, match="rollout worker 3 of 4 gets no problems from a dataset of 3"):
        next(shard_epochs(problems(3), 3, 4, seed=0))


def test_generation_payloads_are_checked_field_by_field():
    request = request_from_payload({"prefix": [1, 2], "max_new_tokens": 4, "temperature": 0.5, "seed": 3}, "7")
    assert (request.prefix_ids, request.max_new_tokens, request.sampling.temperature, request.sampling.seed,
            request.request_id) == ([1, 2], 4, 0.5, 3, "7")
    for payload, message in (([1, 2], "payload is a list"), ({"prefix": [1]}, "KeyError"),
                             ({"prefix": ["x"], "max_new_tokens": 1}, "ValueError")):
        with pytest.raises(ValueError, match=message):
            request_from_payload(payload, "1")


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

    def sample(uid: str) -> dict:
        return {"tree": {"uid": uid, "trajectories": [{"reward": 1.0}], "stats": {}}}

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


def test_trees_the_trainer_dropped_are_replaced_not_counted_against_the_budget():
    """Lockstep (max_staleness=0): two trees posted for version 0 were dropped as stale, so the rollout worker
    must start new ones instead of waiting forever for a version that needs them."""
    from zrl.nameresolve import make_name_resolver, names
    from zrl.rl.tree import TreeSampler
    from zrl.workers.base import WorkerContext
    from zrl.workers.rollout import RolloutWorker
    from zrl.workers.treepo_config import RolloutConfig

    class Tokenizer:
        def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
            return {"input_ids": [ord(c) % 50 + 1 for c in text]}

    resolver = make_name_resolver("memory://")
    worker = RolloutWorker(WorkerContext("exp", "t", "rollout", 0), resolver)
    worker.config = RolloutConfig(max_staleness=0, prompts_per_step=2)
    worker.tokenizer = Tokenizer()
    worker.sampler = TreeSampler(worker.config.tree, 0, lambda ids: "")
    worker.upcoming = shard_epochs(problems(10), 0, 1, seed=0)
    worker.trees, worker.scored = {}, []
    worker.counts = {"trees_posted": 2, "trajectories_posted": 0, "requests": 0, "epoch": 0, "throttled_polls": 0}
    worker.trainer_version, worker.trees_dropped, worker.next_version_check = 0, 0, 0.0
    worker.drops_key = names.sample_drops("exp", "t", "trees", "rollout/0")

    class NoNewVersion:
        def newer_version(self, model: str, than: int) -> None:
            return None

    worker.paramdb = NoNewVersion()
    worker._check_trainer_version()
    assert worker._start_trees() == 0  # the budget of version 0 is used up by the two trees in flight
    resolver.add(names.sample_drops("exp", "t", "trees", "rollout/0"), "2", replace=True)
    worker.next_version_check = 0.0
    worker._check_trainer_version()
    assert worker.trees_dropped == 2
    assert worker._start_trees() == 2 and worker.sampler.in_progress == 2
