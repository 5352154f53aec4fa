"""The trainer's sample accounting: where every trajectory it received went.

Every received trajectory is trained, dropped (stale, or uniform under dynamic sampling), still buffered, or lost
with a trainer that stopped before training it; malformed samples count as garbage. The counters are reported in
the trainer's status and stored in its checkpoints under these keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace


@dataclass
class SampleAccounting:
    received: int = 0
    trained: int = 0
    dropped_stale: int = 0
    dropped_dynamic: int = 0
    garbage: int = 0
    lost: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, counters: Mapping[str, int]) -> SampleAccounting:
        """The counters of `counters` (missing ones are 0; other keys, such as `buffered`, are left out)."""
        return cls(**{f.name: int(counters.get(f.name, 0)) for f in fields(cls)})

    def taken_over(self, buffered: int, received: int | None, garbage: int) -> tuple[SampleAccounting, int]:
        """These counters (a checkpoint's, which then held `buffered` trajectories not yet trained) as a trainer
        that takes over from it counts on, and how many trajectories were lost: those buffered, and those received
        after the checkpoint (`received` and `garbage`: the totals the trainers before counted in all; None: not
        known)."""
        received = max(received or 0, self.received)
        lost = buffered + received - self.received
        return replace(self, received=received, garbage=max(garbage, self.garbage), lost=self.lost + lost), lost
