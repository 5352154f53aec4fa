"""The staleness rule shared by the trainer and the rollout workers.

The trainer steps on `prompts_per_step` trees per version and drops a tree whose oldest segment is more than
`max_staleness` versions older than the weights being trained. So the rollout workers, together, keep at most
`(versions since they started counting + max_staleness + 1) * prompts_per_step` useful trees posted or in progress:
more would only be dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StalenessRule:
    max_staleness: int = 2
    """Versions a tree's oldest segment may lag the weights being trained before the trainer drops it."""
    prompts_per_step: int = 8
    """Trees (prompts) the trainer consumes per optimizer step, that is per version."""

    def is_stale(self, trainer_version: int, oldest_version: int) -> bool:
        """Whether a tree sampled partly by `oldest_version` is too old to train the weights of `trainer_version`."""
        return trainer_version - oldest_version > self.max_staleness

    def trees_allowed(self, versions_ahead: int, workers: int) -> int:
        """Useful trees one of `workers` rollout workers may have posted or in progress, `versions_ahead` trainer
        versions after the version it counts from."""
        return math.ceil((versions_ahead + self.max_staleness + 1) * self.prompts_per_step / workers)

    def trees_to_start(self, versions_ahead: int, workers: int, posted: int, dropped: int, in_progress: int) -> int:
        """Trees a rollout worker may start now: its allowance less its useful trees (`posted` since it counts,
        less the `dropped` ones the trainer discarded meanwhile, which are replaced) and those in progress; may be
        negative."""
        return self.trees_allowed(versions_ahead, workers) - (posted - dropped) - in_progress
