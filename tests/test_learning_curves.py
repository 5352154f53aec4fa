import pytest

from benchmarks.learning_curves import (
    accuracy_at,
    best_setting,
    mean_after_first_minute,
    minutes_grid,
    spread,
    time_to_reach,
)

CURVE = [(0.0, 0.30), (25.0, 0.35), (63.0, 0.40), (135.0, 0.45), (200.0, 0.50)]


def test_a_curve_shows_its_latest_evaluation_and_keeps_its_last_after_it_ends():
    assert accuracy_at(CURVE, 0) == 0.30
    assert accuracy_at(CURVE, 60) == 0.40  # due at the minute, 3 s late: it counts
    assert accuracy_at(CURVE, 60, slack_s=0) == 0.35
    assert accuracy_at(CURVE, 120) == 0.40
    assert accuracy_at(CURVE, 600) == 0.50
    with pytest.raises(ValueError, match="no evaluation by 0 s"):
        accuracy_at([(30.0, 0.5)], 0)


def test_the_sweep_score_is_the_mean_over_whole_minutes_after_the_first():
    assert minutes_grid(3.9) == [0, 1, 2, 3]
    assert mean_after_first_minute(CURVE, 3) == pytest.approx((0.40 + 0.40 + 0.45) / 3)
    assert mean_after_first_minute(CURVE, 4) == pytest.approx((0.40 + 0.40 + 0.45 + 0.50) / 4)
    with pytest.raises(ValueError, match="no whole minute"):
        mean_after_first_minute(CURVE, 0.5)


def test_the_best_setting_has_the_highest_mean_and_ties_go_to_the_smaller():
    assert best_setting({4e-5: [0.4, 0.5], 8e-5: [0.5, 0.5], 1.6e-4: [0.6, 0.3]}) == 8e-5
    assert best_setting({8e-5: [0.5], 4e-5: [0.5]}) == 4e-5
    with pytest.raises(ValueError):
        best_setting({})


def test_time_to_reach_and_spread():
    assert time_to_reach(CURVE, 0.45) == 135.0
    assert time_to_reach(CURVE, 0.30) == 0.0
    assert time_to_reach(CURVE, 0.51) is None
    assert spread([0.5, 0.4, 0.6]) == pytest.approx((0.5, 0.4, 0.6))
