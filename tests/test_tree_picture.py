"""The tree picture: segments placed where they split, leaves by the depth-first order, and a PNG drawn."""

from __future__ import annotations

from zrl.rl.tree.picture import draw_tree, layout_tree, most_telling_tree
from zrl.rl.tree.trajectory import Trajectory


def _trajectory(segments: list[int], tokens: list[int], reward: float) -> Trajectory:
    length = sum(tokens)
    return Trajectory(uid="p", prompt_ids=[5, 6], response_ids=[7] * length, logprobs=[-1.0] * length,
                      segment_ids=segments, segment_tokens=tokens, versions=[0] * len(segments), status="finished",
                      reward=reward)


# Root segment 0 splits into 1 and 2; 1 splits into 3 and 4. Leaves in depth-first order: 3, 4, 2.
TREE = [_trajectory([0, 1, 3], [4, 4, 2], 1.0), _trajectory([0, 2], [4, 3], -1.0), _trajectory([0, 1, 4], [4, 4, 5], -1.0)]


def test_layout_places_each_segment_after_its_parent_and_splits_between_their_children():
    branches = {b.segment_id: b for b in layout_tree(TREE)}
    assert [b.segment_id for b in layout_tree(TREE)] == [0, 1, 3, 4, 2]
    assert {s: (b.parent, b.start, b.end) for s, b in branches.items()} == {
        0: (None, 0, 4), 1: (0, 4, 8), 3: (1, 8, 10), 4: (1, 8, 13), 2: (0, 4, 7)}
    assert (branches[3].y, branches[4].y, branches[2].y) == (0.0, 1.0, 2.0)
    assert branches[1].y == 0.5 and branches[0].y == 1.25
    assert {s: b.leaf for s, b in branches.items()} == {0: None, 1: None, 3: 0, 4: 2, 2: 1}


def test_independent_samples_are_separate_lines_from_the_prompt():
    independent = [_trajectory([i], [6], 1.0) for i in range(3)]
    assert [(b.parent, b.y, b.leaf) for b in layout_tree(independent)] == [(None, 0.0, 0), (None, 1.0, 1),
                                                                           (None, 2.0, 2)]


def test_the_picture_is_a_png_and_the_most_telling_tree_has_right_and_wrong_leaves(tmp_path):
    all_wrong = [_trajectory([0, 1], [3, 3], -1.0), _trajectory([0, 2], [3, 3], -1.0),
                 _trajectory([0, 3], [3, 3], -1.0), _trajectory([0, 4], [3, 3], -1.0)]
    assert most_telling_tree([all_wrong, TREE]) is TREE
    path = draw_tree(TREE, lambda ids: "so \\boxed{7}", "step 1: Compute 3+4.", tmp_path / "trees" / "step-1.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
