"""Learning curves of the learning benchmark: what a curve shows at a given minute, how runs are summarised over
seeds, how a setting is chosen, and how long a run takes to reach an accuracy.

A curve is a list of (seconds of training, accuracy) evaluations in time order. Its accuracy at a minute is its
latest evaluation at or before that minute (plus `SLACK_S`, so that an evaluation due at the minute that came a
few seconds late still counts): what a user watching the run would have seen then. A run that has ended keeps its
last evaluation: its final model is what the user has.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

Curve = Sequence[tuple[float, float]]
SLACK_S = 10.0


def accuracy_at(curve: Curve, seconds: float, slack_s: float = SLACK_S) -> float:
    """The latest evaluation at or before `seconds` (+ `slack_s`)."""
    seen = [accuracy for t, accuracy in curve if t <= seconds + slack_s]
    if not seen:
        raise ValueError(f"the curve has no evaluation by {seconds:.0f} s: {list(curve)}")
    return seen[-1]


def minutes_grid(minutes: float) -> list[int]:
    """The whole minutes at which curves are compared: 0, 1, ..., `minutes`."""
    return list(range(0, math.floor(minutes) + 1))


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, lowest, highest)."""
    return statistics.fmean(values), min(values), max(values)


def mean_after_first_minute(curve: Curve, minutes: float) -> float:
    """The mean accuracy at minutes 1..`minutes`: a curve that climbs early and stays high scores well."""
    points = [accuracy_at(curve, 60.0 * m) for m in minutes_grid(minutes)[1:]]
    if not points:
        raise ValueError(f"a curve of {minutes} minutes has no whole minute after the first")
    return statistics.fmean(points)


def best_setting(scores: Mapping[float, Sequence[float]]) -> float:
    """The setting with the highest mean score over its runs (the smaller setting on a tie)."""
    if not scores:
        raise ValueError("no settings to choose from")
    return max(sorted(scores), key=lambda setting: statistics.fmean(scores[setting]))


def time_to_reach(curve: Curve, target: float) -> float | None:
    """Seconds until the first evaluation at or above `target`; None if the curve never gets there."""
    return next((t for t, accuracy in curve if accuracy >= target), None)
