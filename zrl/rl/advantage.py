"""TreePO subgroup advantages, their broadcast to tokens with batch whitening, and DAPO dynamic sampling."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zrl.rl.tree.trajectory import Trajectory


@dataclass(frozen=True)
class AdvantageConfig:
    """How trajectory rewards become per-token advantages."""

    aggregate: str = "average"
    """How the depth terms combine: "average" (the paper's best) or "size_weighted" (weights |G_k|)."""
    require_subgroup_std: bool = False
    """Also skip a depth-k>=1 term whose subgroup rewards are all equal."""
    whiten: bool = True
    """Whiten the token advantages over all response tokens of the batch."""
    whiten_eps: float = 1e-8
    """Added to the variance before the square root when whitening."""
    scale: str = "batch"
    """"batch": whiten (if `whiten`) over every response token of the batch; "tree": divide each tree's advantages
    by the standard deviation of its rewards (plus `tree_std_eps`), as GRPO does per group, and do not whiten, so a
    tree with one right answer in eight weighs as much as one with four."""
    tree_std_eps: float = 1e-4
    """Added to a tree's reward standard deviation under scale="tree"."""
    dynamic_sampling: bool = False
    """Drop prompts whose trajectories are all correct or all wrong (DAPO dynamic sampling)."""
    credit: str = "trajectory"
    """"trajectory" (the paper): one advantage per trajectory on all its tokens; "segment": the tokens of each
    segment get R_i minus the mean reward of the deepest subgroup (more than one member) that shares the path up to
    that segment, so a segment is credited with how much it changed the expected reward of its prefix."""

    def __post_init__(self) -> None:
        if self.aggregate not in ("average", "size_weighted"):
            raise ValueError(f"AdvantageConfig.aggregate={self.aggregate!r} must be 'average' or 'size_weighted'")
        if self.credit not in ("trajectory", "segment"):
            raise ValueError(f"AdvantageConfig.credit={self.credit!r} must be 'trajectory' or 'segment'")
        if self.scale not in ("batch", "tree"):
            raise ValueError(f"AdvantageConfig.scale={self.scale!r} must be 'batch' or 'tree'")
        if not self.tree_std_eps > 0:
            raise ValueError(f"AdvantageConfig.tree_std_eps must be > 0, got {self.tree_std_eps!r}")


def subgroup_advantages(paths: Sequence[Sequence[int]], rewards: Sequence[float], aggregate: str = "average",
                        require_subgroup_std: bool = False) -> list[float]:
    """Advantages of one prompt's trajectories from their segment-id paths and rewards.

    For trajectory i with n segments, the term at depth k in 0..n-1 is R_i minus the mean reward of the
    trajectories sharing i's first k segment ids (k = 0: the whole prompt group). k = 0 always counts; k >= 1
    counts only if that subgroup has more than one member (and, optionally, unequal rewards). The trajectory's
    own full path (k = n) never counts.
    """
    if len(paths) != len(rewards):
        raise ValueError(f"{len(paths)} segment paths but {len(rewards)} rewards")
    if aggregate not in ("average", "size_weighted"):
        raise ValueError(f"aggregate={aggregate!r} must be 'average' or 'size_weighted'")
    members: dict[tuple[int, ...], list[float]] = {(): [float(r) for r in rewards]}
    for path, reward in zip(paths, rewards, strict=True):
        for k in range(1, len(path)):
            members.setdefault(tuple(path[:k]), []).append(float(reward))
    out = []
    for path, reward in zip(paths, rewards, strict=True):
        terms, sizes = [], []
        for k in range(max(len(path), 1)):
            group = members[tuple(path[:k])]
            if k >= 1 and (len(group) <= 1 or (require_subgroup_std and float(np.std(group)) == 0.0)):
                continue
            terms.append(float(reward) - float(np.mean(group)))
            sizes.append(len(group))
        if aggregate == "average":
            out.append(float(np.mean(terms)))
        else:
            out.append(float(np.dot(sizes, terms) / np.sum(sizes)))
    return out


def segment_advantages(paths: Sequence[Sequence[int]], rewards: Sequence[float]) -> list[list[float]]:
    """Per-segment advantages of one tree's trajectories (the "segment" credit).

    Segment j of trajectory i (j = 0..n-1) gets R_i minus the mean reward of the trajectories that share i's first
    j segment ids, taking the deepest such group with more than one member (j = 0: the whole tree).
    """
    if len(paths) != len(rewards):
        raise ValueError(f"{len(paths)} segment paths but {len(rewards)} rewards")
    members: dict[tuple[int, ...], list[float]] = {}
    for path, reward in zip(paths, rewards, strict=True):
        for k in range(len(path)):
            members.setdefault(tuple(path[:k]), []).append(float(reward))
    members.setdefault((), [float(r) for r in rewards])
    out = []
    for path, reward in zip(paths, rewards, strict=True):
        baseline = float(np.mean(members[()]))
        values = []
        for j in range(len(path)):
            group = members[tuple(path[:j])]
            if len(group) > 1:
                baseline = float(np.mean(group))
            values.append(float(reward) - baseline)
        out.append(values)
    return out


def tree_key(trajectory: Trajectory) -> str:
    """The advantage group of a trajectory: its tree (segment ids are only unique within one), else its prompt."""
    return trajectory.tree_id or trajectory.uid


def _by_tree(trajectories: Sequence[Trajectory]) -> dict[str, list[int]]:
    by_tree: dict[str, list[int]] = {}
    for i, t in enumerate(trajectories):
        if t.reward is None:
            raise ValueError(f"trajectory {i} of prompt {t.uid!r} has no reward; score it first")
        by_tree.setdefault(tree_key(t), []).append(i)
    return by_tree


def trajectory_advantages(trajectories: Sequence[Trajectory], config: AdvantageConfig) -> list[float]:
    """Subgroup advantages for a batch, grouped by tree; every trajectory needs its reward filled in."""
    out = [0.0] * len(trajectories)
    for indices in _by_tree(trajectories).values():
        advs = subgroup_advantages([trajectories[i].segment_ids for i in indices],
                                   [trajectories[i].reward for i in indices], config.aggregate,
                                   config.require_subgroup_std)
        for i, a in zip(indices, advs, strict=True):
            out[i] = a
    return out


def token_advantages(advantages: Sequence[float], lengths: Sequence[int], whiten: bool = True,
                     eps: float = 1e-8) -> list[np.ndarray]:
    """Broadcast each trajectory's advantage to its response tokens, then whiten over all tokens of the batch.

    Whitening is token-weighted: (A - mean) / sqrt(var + eps) with mean and var over every response token.
    """
    if len(advantages) != len(lengths):
        raise ValueError(f"{len(advantages)} advantages but {len(lengths)} lengths")
    per_token = [np.full(int(n), float(a), dtype=np.float64) for a, n in zip(advantages, lengths, strict=True)]
    return whiten_tokens(per_token, whiten, eps)


def whiten_tokens(per_token: list[np.ndarray], whiten: bool = True, eps: float = 1e-8) -> list[np.ndarray]:
    """(A - mean) / sqrt(var + eps) over every token of the batch (unchanged when `whiten` is false)."""
    if not whiten:
        return per_token
    flat = np.concatenate(per_token) if per_token else np.zeros(0)
    if flat.size == 0:
        return per_token
    mean, var = flat.mean(), flat.var()
    return [(x - mean) / np.sqrt(var + eps) for x in per_token]


@dataclass(frozen=True)
class DynamicSamplingResult:
    """The trajectories kept by dynamic sampling and what was dropped."""

    kept: list[Trajectory]
    dropped_prompts: int
    """Trees (one per sampled prompt) dropped because their rewards were all equal."""
    dropped_all_correct: int
    dropped_all_wrong: int


def dynamic_sampling(trajectories: Sequence[Trajectory], correct_threshold: float = 0.0) -> DynamicSamplingResult:
    """Drop every tree whose trajectories are all correct (reward > threshold) or all wrong."""
    by_tree: dict[str, list[Trajectory]] = {}
    for t in trajectories:
        if t.reward is None:
            raise ValueError(f"a trajectory of prompt {t.uid!r} has no reward; score it first")
        by_tree.setdefault(tree_key(t), []).append(t)
    kept: list[Trajectory] = []
    all_correct = all_wrong = 0
    for group in by_tree.values():
        n_correct = sum(1 for t in group if t.reward > correct_threshold)
        if n_correct == len(group):
            all_correct += 1
        elif n_correct == 0:
            all_wrong += 1
        else:
            kept.extend(group)
    return DynamicSamplingResult(kept, all_correct + all_wrong, all_correct, all_wrong)


def batch_advantages(trajectories: Sequence[Trajectory], config: AdvantageConfig) -> list[np.ndarray]:
    """Per-token advantages of a training batch (dynamic sampling, if wanted, is applied by the caller first)."""
    if config.credit == "segment":
        per_token = segment_token_advantages(trajectories)
    else:
        advs = trajectory_advantages(trajectories, config)
        per_token = token_advantages(advs, [len(t.response_ids) for t in trajectories], whiten=False)
    if config.scale == "tree":
        return scale_by_tree_std(trajectories, per_token, config.tree_std_eps)
    return whiten_tokens(per_token, config.whiten, config.whiten_eps)


def scale_by_tree_std(trajectories: Sequence[Trajectory], per_token: list[np.ndarray], eps: float) -> list[np.ndarray]:
    """Divide the token advantages of each tree by the standard deviation of that tree's rewards plus `eps`."""
    out = list(per_token)
    for indices in _by_tree(trajectories).values():
        std = float(np.std([trajectories[i].reward for i in indices]))
        for i in indices:
            out[i] = per_token[i] / (std + eps)
    return out


def segment_token_advantages(trajectories: Sequence[Trajectory]) -> list[np.ndarray]:
    """The "segment" credit of every response token, tree by tree, before whitening."""
    out: list[np.ndarray] = [np.zeros(0)] * len(trajectories)
    for indices in _by_tree(trajectories).values():
        values = segment_advantages([trajectories[i].segment_ids for i in indices],
                                    [trajectories[i].reward for i in indices])
        for i, per_segment in zip(indices, values, strict=True):
            t = trajectories[i]
            if sum(t.segment_tokens) != len(t.response_ids):
                raise ValueError(f"trajectory {i} of prompt {t.uid!r}: segment_tokens sum to "
                                 f"{sum(t.segment_tokens)}, but it has {len(t.response_ids)} response tokens")
            out[i] = np.repeat(np.asarray(per_segment, dtype=np.float64), t.segment_tokens)
    return out
