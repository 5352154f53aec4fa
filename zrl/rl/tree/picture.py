"""A picture of one sampled tree: its segments, where its branches split, and which leaves were right.

Time runs left to right in response tokens; every segment is a horizontal line, joined to its parent where it split
off. A leaf is green when its trajectory's reward was positive, red otherwise, and labelled with its answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from zrl.rl.reward import last_boxed
from zrl.rl.tree.trajectory import Trajectory


@dataclass(frozen=True)
class Branch:
    """One segment of a tree, placed in the picture."""

    segment_id: int
    parent: int | None
    """The segment it continues; None for a segment that starts at the prompt."""
    start: int
    """Response tokens before it."""
    end: int
    y: float
    """Vertical place: leaves are 0, 1, 2, ... in depth-first order; a split is at the mean of its children."""
    leaf: int | None
    """Index of the trajectory that ends with this segment, if one does."""


def layout_tree(trajectories: Sequence[Trajectory]) -> list[Branch]:
    """Every segment of the tree the trajectories share, placed; parents before children."""
    parents: dict[int, int | None] = {}
    spans: dict[int, tuple[int, int]] = {}
    leaves: dict[int, int] = {}
    children: dict[int | None, list[int]] = {}
    for index, trajectory in enumerate(trajectories):
        parent, start = None, 0
        for segment, tokens in zip(trajectory.segment_ids, trajectory.segment_tokens, strict=True):
            if segment not in parents:
                parents[segment] = parent
                spans[segment] = (start, start + tokens)
                children.setdefault(parent, []).append(segment)
            parent, start = segment, start + tokens
        if parent is not None:
            leaves.setdefault(parent, index)
    heights: dict[int, float] = {}
    order: list[int] = []
    next_leaf = 0.0

    def place(segment: int) -> float:
        nonlocal next_leaf
        order.append(segment)
        below = [place(child) for child in children.get(segment, [])]
        if below:
            heights[segment] = sum(below) / len(below)
        else:
            heights[segment], next_leaf = next_leaf, next_leaf + 1
        return heights[segment]

    for root in children.get(None, []):
        place(root)
    return [Branch(segment, parents[segment], *spans[segment], heights[segment], leaves.get(segment))
            for segment in order]


def draw_tree(trajectories: Sequence[Trajectory], decode: Callable[[Sequence[int]], str], title: str,
              path: Path) -> Path:
    """Draw the tree of `trajectories` (one prompt's, rewards filled in) into a PNG file at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    branches = layout_tree(trajectories)
    by_id = {branch.segment_id: branch for branch in branches}
    leaves = sum(branch.leaf is not None for branch in branches)
    figure, axes = pyplot.subplots(figsize=(10, 1.5 + 0.35 * max(leaves, 1)))
    root_y = sum(b.y for b in branches if b.parent is None) / max(1, sum(b.parent is None for b in branches))
    axes.plot([0], [root_y], "o", color="black")
    for branch in branches:
        joint_y = by_id[branch.parent].y if branch.parent is not None else root_y
        axes.plot([branch.start, branch.start, branch.end], [joint_y, branch.y, branch.y], color="0.35", lw=1.2)
        if branch.leaf is None:
            continue
        trajectory = trajectories[branch.leaf]
        right = (trajectory.reward or 0.0) > 0
        axes.plot([branch.end], [branch.y], "o" if right else "x", color="tab:green" if right else "tab:red",
                  markersize=7)
        answer = last_boxed(decode(trajectory.response_ids)) or f"no answer ({trajectory.status})"
        axes.annotate(answer, (branch.end, branch.y), xytext=(6, 0), textcoords="offset points", va="center",
                      fontsize=8)
    right_count = sum((t.reward or 0.0) > 0 for t in trajectories)
    axes.set_title(f"{title}\n{len(trajectories)} trajectories, {right_count} right, {len(branches)} segments",
                   fontsize=9, loc="left")
    axes.set_xlabel("response tokens")
    axes.set_yticks([])
    axes.invert_yaxis()
    for side in ("top", "right", "left"):
        axes.spines[side].set_visible(False)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    pyplot.close(figure)
    return path


def most_telling_tree(trees: Sequence[Sequence[Trajectory]]) -> Sequence[Trajectory]:
    """The tree to show: one with right and wrong leaves if any, then the one with the most segments."""
    def score(trajectories: Sequence[Trajectory]) -> tuple[bool, int]:
        rewards = {(t.reward or 0.0) > 0 for t in trajectories}
        return len(rewards) == 2, len({s for t in trajectories for s in t.segment_ids})

    return max(trees, key=score)
