"""TreePO subgroup advantages pinned against hand-computed trees."""

from __future__ import annotations

import numpy as np
import pytest

from zrl.rl.advantage import (
    AdvantageConfig,
    batch_advantages,
    dynamic_sampling,
    subgroup_advantages,
    token_advantages,
    trajectory_advantages,
)
from zrl.rl.tree import Trajectory

A, B, C, D, E, E2 = 1, 2, 3, 4, 5, 6
PATHS = [[A, C], [A, D], [B, E], [B, E2]]
REWARDS = [1.0, -1.0, -1.0, -1.0]


def test_treepo_reference_example_average():
    # G_0 is all four: mean (1 - 1 - 1 - 1) / 4 = -0.5.
    # k = 1 subgroups: {[a,c],[a,d]} mean 0, {[b,e],[b,e']} mean -1. k = 2 would be the own full path: never.
    # [a,c]:  k0 1 - (-0.5) = 1.5,   k1 1 - 0 = 1      -> (1.5 + 1) / 2   =  1.25
    # [a,d]:  k0 -1 + 0.5 = -0.5,    k1 -1 - 0 = -1    -> (-0.5 - 1) / 2  = -0.75
    # [b,e]:  k0 -0.5,               k1 -1 - (-1) = 0  -> (-0.5 + 0) / 2  = -0.25
    # [b,e']: same as [b,e]                                               = -0.25
    assert subgroup_advantages(PATHS, REWARDS) == pytest.approx([1.25, -0.75, -0.25, -0.25])


def test_treepo_reference_example_requiring_subgroup_std():
    # the {b} subgroup has rewards (-1, -1), std 0, so its term is skipped: [b,e] and [b,e'] keep only k0 = -0.5
    got = subgroup_advantages(PATHS, REWARDS, require_subgroup_std=True)
    assert got == pytest.approx([1.25, -0.75, -0.5, -0.5])


def test_treepo_reference_example_size_weighted():
    # weights |G_0| = 4, |G_1| = 2:
    # [a,c]: (4 * 1.5 + 2 * 1) / 6 = 8/6;  [a,d]: (4 * -0.5 + 2 * -1) / 6 = -4/6;  [b,*]: (4 * -0.5 + 0) / 6 = -2/6
    got = subgroup_advantages(PATHS, REWARDS, aggregate="size_weighted")
    assert got == pytest.approx([8 / 6, -4 / 6, -2 / 6, -2 / 6])


def test_singleton_subgroups_are_skipped_so_independent_samples_reduce_to_grpo():
    # all first segments differ: only k = 0 counts, which is R_i - mean(R)
    paths = [[1, 10], [2, 20], [3, 30]]
    rewards = [1.0, -1.0, -1.0]
    assert subgroup_advantages(paths, rewards) == pytest.approx([4 / 3, -2 / 3, -2 / 3])


def test_deeper_tree_by_hand():
    # paths [1,2,3],[1,2,4],[1,5],[6]; rewards 1, 1, -1, -1. G_0 mean 0.
    # [1,2,3]: k0 1; k1 G={t0,t1,t2} mean 1/3 -> 2/3; k2 G={t0,t1} mean 1 -> 0      -> (1 + 2/3 + 0) / 3 = 5/9
    # [1,2,4]: same as [1,2,3]                                                      = 5/9
    # [1,5]:   k0 -1; k1 G={t0,t1,t2} -> -1 - 1/3 = -4/3                           -> (-1 - 4/3) / 2 = -7/6
    # [6]:     k0 -1 only                                                            = -1
    paths = [[1, 2, 3], [1, 2, 4], [1, 5], [6]]
    got = subgroup_advantages(paths, [1.0, 1.0, -1.0, -1.0])
    assert got == pytest.approx([5 / 9, 5 / 9, -7 / 6, -1.0])


def test_mismatched_lengths_and_bad_aggregate_are_errors():
    with pytest.raises(ValueError, match="2 segment paths but 1 rewards"):
        subgroup_advantages([[1], [2]], [1.0])
    with pytest.raises(ValueError, match="aggregate='max'"):
        AdvantageConfig(aggregate="max")


def _traj(uid, path, reward, n_tokens):
    return Trajectory(uid=uid, prompt_ids=[9], response_ids=[1] * n_tokens, logprobs=[-0.1] * n_tokens,
                      segment_ids=path, segment_tokens=[n_tokens // len(path)] * len(path),
                      versions=[0] * len(path), status="finished", reward=reward)


def test_trajectory_advantages_group_by_prompt():
    batch = [_traj("p", p, r, 2) for p, r in zip(PATHS, REWARDS, strict=True)]
    batch += [_traj("q", [1], 1.0, 2), _traj("q", [2], -1.0, 2)]
    got = trajectory_advantages(batch, AdvantageConfig())
    assert got == pytest.approx([1.25, -0.75, -0.25, -0.25, 1.0, -1.0])
    batch[0].reward = None
    with pytest.raises(ValueError, match="trajectory 0 of prompt 'p' has no reward"):
        trajectory_advantages(batch, AdvantageConfig())


def test_whitening_is_token_weighted():
    # advantages 1 over 3 tokens and -1 over 1 token: token mean 0.5, token var 0.75
    got = token_advantages([1.0, -1.0], [3, 1], whiten=True, eps=1e-8)
    scale = np.sqrt(0.75 + 1e-8)
    np.testing.assert_allclose(got[0], [0.5 / scale] * 3)
    np.testing.assert_allclose(got[1], [-1.5 / scale])
    flat = np.concatenate(got)
    assert flat.mean() == pytest.approx(0.0, abs=1e-12)
    assert flat.var() == pytest.approx(1.0, abs=1e-6)
    raw = token_advantages([1.0, -1.0], [3, 1], whiten=False)
    np.testing.assert_allclose(np.concatenate(raw), [1, 1, 1, -1])


def test_batch_advantages_broadcast_then_whiten():
    batch = [_traj("p", p, r, n) for p, r, n in zip(PATHS, REWARDS, [2, 4, 2, 2], strict=True)]
    got = batch_advantages(batch, AdvantageConfig())
    raw = np.repeat([1.25, -0.75, -0.25, -0.25], [2, 4, 2, 2])
    np.testing.assert_allclose(np.concatenate(got), (raw - raw.mean()) / np.sqrt(raw.var() + 1e-8))
    assert [len(x) for x in got] == [2, 4, 2, 2]


def test_dynamic_sampling_drops_and_counts_uniform_prompts():
    batch = ([_traj("right", [i], 1.0, 1) for i in range(3)] + [_traj("wrong", [i], -1.0, 1) for i in range(3)]
             + [_traj("mixed", [i], r, 1) for i, r in enumerate([1.0, -1.0, -1.0])])
    result = dynamic_sampling(batch)
    assert [t.uid for t in result.kept] == ["mixed"] * 3
    assert (result.dropped_prompts, result.dropped_all_correct, result.dropped_all_wrong) == (2, 1, 1)


def _sampled_tree(rewards_by_first_token):
    """One tree of prompt uid "p": width 4, first segments 1 and 2, then EOS; reward by the first token."""
    from zrl.engines.base import GenerationResult
    from zrl.rl.tree import TreeSampler, TreeSamplerConfig

    def generate(requests):
        out = []
        for i, req in enumerate(requests):
            tokens = [1 + i % 2] if len(req.prefix_ids) == 1 else [0]
            out.append(GenerationResult(req.request_id, tokens, [-0.1] * len(tokens), eos=tokens == [0], version=0))
        return out

    sampler = TreeSampler(TreeSamplerConfig(width=4, branching=2, segment_len=1, max_depth=2), eos_token_id=0,
                          decode=lambda ids: "")
    (tree,) = sampler.run([("p", [9])], generate)
    for t in tree.trajectories:
        t.reward = rewards_by_first_token[t.response_ids[0]]
    return tree.trajectories


def test_two_trees_of_one_prompt_are_separate_advantage_groups():
    first = _sampled_tree({1: 1.0, 2: -1.0})
    second = _sampled_tree({1: -1.0, 2: -1.0})
    # both trees number their segments from 0, so only the tree id tells them apart
    assert [t.segment_ids for t in first] == [t.segment_ids for t in second]
    alone = trajectory_advantages(first, AdvantageConfig()) + trajectory_advantages(second, AdvantageConfig())
    assert trajectory_advantages(first + second, AdvantageConfig()) == pytest.approx(alone)


def test_dynamic_sampling_judges_each_tree_of_one_prompt_on_its_own():
    mixed = _sampled_tree({1: 1.0, 2: -1.0})
    all_wrong = _sampled_tree({1: -1.0, 2: -1.0})
    result = dynamic_sampling(mixed + all_wrong)
    assert result.kept == mixed
    assert (result.dropped_prompts, result.dropped_all_wrong) == (1, 1)


def test_trajectories_without_a_tree_id_group_by_prompt_uid():
    batch = [_traj("p", p, r, 2) for p, r in zip(PATHS, REWARDS, strict=True)]
    assert all(t.tree_id == "" for t in batch)
    assert trajectory_advantages(batch, AdvantageConfig()) == pytest.approx([1.25, -0.75, -0.25, -0.25])


def test_segment_credit_scores_each_segment_against_the_prefix_it_continues():
    from zrl.rl.advantage import segment_advantages

    # Paths [a,c], [a,d], [b,e], [b,e'] with rewards 1, -1, -1, -1 (the treepo.md example).
    values = segment_advantages([[0, 1], [0, 2], [3, 4], [3, 5]], [1.0, -1.0, -1.0, -1.0])
    # First segments against the whole tree (mean -0.5); second ones against their siblings.
    assert values == [[1.5, 1.0], [-0.5, -1.0], [-0.5, 0.0], [-0.5, 0.0]]
    # A segment without siblings keeps the deepest baseline that has more than one member.
    assert segment_advantages([[0, 1, 2], [0, 3, 4]], [1.0, -1.0]) == [[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]


def test_segment_credit_reaches_every_token_and_is_whitened():
    from zrl.rl.advantage import AdvantageConfig, batch_advantages
    from zrl.rl.tree.trajectory import Trajectory

    def traj(segments, tokens, reward):
        n = sum(tokens)
        return Trajectory(uid="p", prompt_ids=[1], response_ids=[2] * n, logprobs=[0.0] * n, segment_ids=segments,
                          segment_tokens=tokens, versions=[0] * len(segments), status="finished", reward=reward,
                          tree_id="t")

    batch = [traj([0, 1], [2, 3], 1.0), traj([0, 2], [2, 1], -1.0)]
    raw = batch_advantages(batch, AdvantageConfig(credit="segment", whiten=False))
    # The shared first segment nets to zero over the two; the second segments carry the difference.
    assert raw[0].tolist() == [1.0] * 5 and raw[1].tolist() == [-1.0] * 3
    whitened = np.concatenate(batch_advantages(batch, AdvantageConfig(credit="segment")))
    assert abs(whitened.mean()) < 1e-9 and abs(whitened.std() - 1.0) < 1e-6
    with pytest.raises(ValueError, match="credit='tokens' must be 'trajectory' or 'segment'"):
        AdvantageConfig(credit="tokens")


def test_tree_scale_divides_each_tree_by_its_own_reward_std():
    rare = _sampled_tree({1: 1.0, 2: -1.0})  # two trajectories, one right: std 1
    first = [_traj("p", p, r, 2) for p, r in zip(PATHS, REWARDS, strict=True)]  # one right of four: std sqrt(3)/2
    config = AdvantageConfig(scale="tree", tree_std_eps=1e-4)
    got = batch_advantages(first, config)
    raw = trajectory_advantages(first, AdvantageConfig())
    std = float(np.std(REWARDS))
    for tokens, advantage in zip(got, raw, strict=True):
        np.testing.assert_allclose(tokens, [advantage / (std + 1e-4)] * 2)
    # Trees are scaled separately: adding another tree leaves the first one's advantages as they were.
    together = batch_advantages(first + rare, config)
    for alone, mixed in zip(got, together[:4], strict=True):
        np.testing.assert_allclose(alone, mixed)
    # A tree whose rewards are all equal has zero advantages, not a division by zero.
    uniform = _sampled_tree({1: -1.0, 2: -1.0})
    assert all(np.all(tokens == 0) for tokens in batch_advantages(uniform, config))
    with pytest.raises(ValueError, match="scale='group' must be 'batch' or 'tree'"):
        AdvantageConfig(scale="group")
