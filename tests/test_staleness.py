"""The staleness rule the trainer drops trees by and the rollout workers throttle by, and the check that the
trainer and rollout groups of an experiment agree on it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from zrl.config import WorkerGroupConfig
from zrl.rl.staleness import StalenessRule
from zrl.workers.treepo_config import RolloutConfig, TrainerConfig, staleness_disagreements


@pytest.mark.parametrize(("trainer_version", "oldest_version", "stale"), [(5, 3, False), (5, 2, True), (0, 0, False),
                                                                          (3, 4, False)])
def test_a_tree_is_stale_when_its_oldest_segment_lags_more_than_max_staleness_versions(trainer_version,
                                                                                      oldest_version, stale):
    assert StalenessRule(max_staleness=2).is_stale(trainer_version, oldest_version) is stale


def test_lockstep_drops_every_tree_not_sampled_by_the_current_version():
    rule = StalenessRule(max_staleness=0)
    assert not rule.is_stale(4, 4) and rule.is_stale(4, 3)


def test_the_rollout_allowance_is_max_staleness_plus_one_versions_of_trees_shared_by_the_workers():
    rule = StalenessRule(max_staleness=2, prompts_per_step=8)
    assert rule.trees_allowed(0, 1) == 24
    assert rule.trees_allowed(2, 1) == 40
    assert rule.trees_allowed(0, 5) == 5  # 24 / 5, rounded up: the workers together never fall short


def test_trees_to_start_replaces_dropped_trees_and_counts_those_in_progress():
    rule = StalenessRule(max_staleness=1, prompts_per_step=2)
    assert rule.trees_to_start(3, 1, posted=10, dropped=1, in_progress=0) == 1  # (3 + 1 + 1) * 2 - 10 + 1
    assert rule.trees_to_start(0, 1, posted=0, dropped=0, in_progress=4) == 0
    assert rule.trees_to_start(0, 1, posted=6, dropped=0, in_progress=0) == -2


def test_both_worker_configs_build_the_rule_from_their_own_fields():
    assert TrainerConfig(max_staleness=0, prompts_per_step=3).staleness == StalenessRule(0, 3)
    assert RolloutConfig(max_staleness=0, prompts_per_step=3).staleness == StalenessRule(0, 3)


def test_a_rollout_group_that_disagrees_with_the_trainer_is_named_with_both_keys():
    workers = {"trainer": WorkerGroupConfig(type="trainer", config=TrainerConfig()),
               "rollout": WorkerGroupConfig(type="rollout", config=RolloutConfig())}
    assert staleness_disagreements(workers) == []
    workers["rollout"] = replace(workers["rollout"], config=RolloutConfig(max_staleness=3))
    assert staleness_disagreements(workers) == [
        "workers.trainer.config.max_staleness (2) and workers.rollout.config.max_staleness (3) must be equal"]


def test_the_math_experiment_sets_the_rule_once_for_both_groups():
    from zrl.controller.experiment_file import load_experiment
    from zrl.controller.overrides import apply_overrides

    config = load_experiment("experiments/treepo_math.py")
    assert staleness_disagreements(config.workers) == []
    config = apply_overrides(config, ["max_staleness=0", "prompts_per_step=3"])
    assert staleness_disagreements(config.workers) == []
    assert config.workers["rollout"].config.staleness == StalenessRule(0, 3)
    config = apply_overrides(config, ["workers.rollout.config.max_staleness=1"])
    assert len(staleness_disagreements(config.workers)) == 1
