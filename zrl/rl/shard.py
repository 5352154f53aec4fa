"""One worker's shard of the problems, walked epoch after epoch, with an explicit position to save and resume.

The shard of worker `index` of `count` is `problems[index::count]`; every epoch visits it once, in an order
shuffled by (`seed`, `index`, epoch). The position is how many problems have been taken from the shard since the
start: epoch = position // shard size and offset = position % shard size, so a cursor put back at a saved
position continues exactly where the saved one stood, without replaying the problems before it. A position that
is a multiple of the shard size is the start of the next epoch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from zrl.rl.problem import Problem


class ShardCursor:
    """(epoch, problem) pairs of one worker's shard, forever; `position` counts the problems taken so far."""

    def __init__(self, problems: Sequence[Problem], index: int, count: int, seed: int, position: int = 0):
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise ValueError(f"shard position must be an int >= 0, got {position!r}")
        self.shard = list(problems[index::count])
        if not self.shard:
            raise ValueError(f"rollout worker {index} of {count} gets no problems from a dataset of {len(problems)}")
        self.index = index
        self.seed = seed
        self.position = position
        self._order_epoch = -1
        self._order: list[Problem] = []

    @property
    def epoch(self) -> int:
        """The epoch of the next problem."""
        return self.position // len(self.shard)

    @property
    def offset(self) -> int:
        """Where in its epoch's order the next problem is."""
        return self.position % len(self.shard)

    def next(self) -> tuple[int, Problem]:
        """The next (epoch, problem); advances the position by one."""
        epoch, offset = self.epoch, self.offset
        if epoch != self._order_epoch:
            self._order = list(self.shard)
            random.Random(f"{self.seed}-{self.index}-{epoch}").shuffle(self._order)
            self._order_epoch = epoch
        self.position += 1
        return epoch, self._order[offset]
