"""The TreePO branching arithmetic and segment checks, pinned by hand-computed cases."""

from __future__ import annotations

import pytest

from zrl.rl.tree.rules import branch_total, cut_at_eos, even_split, has_repetition, softmax_split


@pytest.mark.parametrize(("width", "n_done", "n_active", "n_finished", "b", "expected"), [
    (8, 0, 2, 0, 2, 4),     # min(8, 2*2) = 4
    (8, 0, 4, 0, 2, 8),     # min(8, 2*4) = 8
    (5, 0, 4, 0, 2, 5),     # budget limited by remaining = 5
    (8, 3, 2, 3, 2, 5),     # remaining 5, b*(2+3) = 10 -> 5
    (8, 7, 3, 1, 2, 3),     # remaining 1 < |P| = 3 -> every active path keeps one child
    (8, 8, 2, 0, 2, 2),     # nothing remaining: still at least |P|
    (16, 2, 1, 2, 2, 6),    # min(14, 2*(1+2)) = 6
    (4, 6, 1, 0, 2, 1),     # n_done beyond w: remaining clamps at 0
])
def test_branch_total(width, n_done, n_active, n_finished, b, expected):
    assert branch_total(width, n_done, n_active, n_finished, b) == expected


@pytest.mark.parametrize(("total", "n", "expected"), [
    (4, 2, [2, 2]),
    (5, 4, [1, 1, 1, 2]),   # remainder to the last
    (7, 3, [2, 2, 3]),
    (3, 3, [1, 1, 1]),
    (2, 3, [1, 1, 2]),      # 2 // 3 = 0 each, remainder 2 to the last, then at least one each
    (0, 0, []),
])
def test_even_split(total, n, expected):
    assert even_split(total, n) == expected


def test_softmax_split_gives_each_path_one_child_and_the_rest_by_largest_remainder():
    # extra = 6 - 3 = 3; logprobs [0, 0, -inf-ish]: shares 0.5, 0.5, ~0 -> quotas 1.5, 1.5, 0 -> floors 1, 1, 0;
    # one left goes to the first largest remainder (tie broken by order) -> [1+2, 1+1, 1+0]
    assert softmax_split(6, [0.0, 0.0, -100.0], temperature=1.0) == [3, 2, 1]
    assert sum(softmax_split(11, [-1.0, -2.0, -3.0, -0.5], temperature=0.7)) == 11


def test_softmax_split_temperature_flattens_toward_even():
    sharp = softmax_split(10, [0.0, -3.0], temperature=0.1)
    flat = softmax_split(10, [0.0, -3.0], temperature=1000.0)
    assert sharp == [9, 1]
    assert flat == [5, 5]


def test_softmax_split_never_below_one_when_total_is_small():
    assert softmax_split(2, [0.0, -1.0, -2.0], temperature=1.0) == [1, 1, 1]


@pytest.mark.parametrize(("tokens", "expected"), [
    ([0, 5, 6], (1, True)),     # EOS at index 0
    ([5, 0, 6], (2, True)),
    ([5, 6, 0], (3, True)),
    ([5, 6, 7], (3, False)),
    ([], (0, False)),
])
def test_cut_at_eos_finds_eos_anywhere(tokens, expected):
    assert cut_at_eos(tokens, eos_token_id=0) == expected


def test_repetition_counts_non_overlapping_occurrences():
    assert has_repetition("ab" * 8, substring_chars=2, count=8)
    assert not has_repetition("ab" * 7, substring_chars=2, count=8)
    # 9 'a's hold eight overlapping "aa" but only four non-overlapping ones
    assert not has_repetition("a" * 9, substring_chars=2, count=8)
    assert has_repetition("x" + "0123456789abcdefghijklmnopqrstuv" * 8 + "y", substring_chars=32, count=8)
    assert not has_repetition("the quick brown fox jumps over the lazy dog", substring_chars=32, count=8)


def test_cut_at_eos_stops_at_the_first_of_several_ids():
    assert cut_at_eos([5, 9, 0, 6], eos_token_id={0, 9}) == (2, True)
    assert cut_at_eos([5, 0, 9], eos_token_id=[9, 0]) == (2, True)
    assert cut_at_eos([5, 6], eos_token_id=(0, 9)) == (2, False)
