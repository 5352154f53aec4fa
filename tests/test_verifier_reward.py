"""Answer extraction and reward arithmetic on text."""

from __future__ import annotations

import pytest

from zrl.rl.reward import correctness_reward, has_boxed_answer, last_boxed, overlong_penalty


@pytest.mark.parametrize(("text", "expected"), [
    ("so \\boxed{42}.", "42"),
    ("\\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{{a}{b{c}}} tail", "{a}{b{c}}"),
    ("\\boxed{3} and an unfinished \\boxed{4", "3"),
    ("\\fbox{5}", "5"),
    ("\\boxed{}", ""),
    ("no answer here", None),
    ("\\boxed{never closed", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected
    assert has_boxed_answer(text) == (expected is not None)


def test_correctness_reward():
    assert correctness_reward(True) == 1.0
    assert correctness_reward(False) == -1.0


@pytest.mark.parametrize(("length", "cap", "buffer", "expected"), [
    (6, 10, 4, 0.0),       # exactly cap - buffer: no penalty
    (8, 10, 4, -0.5),      # -(8 - 6) / 4
    (10, 10, 4, -1.0),
    (3, 10, 0, 0.0),       # buffer 0: off
    (12, 10, 0, 0.0),
])
def test_overlong_penalty(length, cap, buffer, expected):
    assert overlong_penalty(length, cap, buffer) == pytest.approx(expected)
