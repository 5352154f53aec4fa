"""Plain-data results of tree sampling: trajectories and per-prompt trees, msgpack-ready via to_dict/from_dict."""

from __future__ import annotations

import enum
from dataclasses import MISSING, dataclass, field, fields
from typing import Any


class Status(str, enum.Enum):
    """Why a path stopped growing, in the order the sampler checks."""

    FINISHED = "finished"
    EOS_STOPPED = "eos_stopped"
    LENGTH_CAPPED = "length_capped"
    DEPTH_CAPPED = "depth_capped"
    REPETITION_STOPPED = "repetition_stopped"


@dataclass
class Trajectory:
    """One terminated path of a prompt's tree."""

    uid: str
    """The prompt's uid."""
    prompt_ids: list[int]
    response_ids: list[int]
    """Response tokens; when the path ended with EOS, the EOS token is the last one."""
    logprobs: list[float]
    """Behaviour logprob of each response token, as the engine returned it."""
    segment_ids: list[int]
    """Segment id path from the root; trajectories that share a prefix share its ids."""
    segment_tokens: list[int]
    """Number of response tokens in each segment."""
    versions: list[int]
    """Policy version that produced each segment."""
    status: str
    """A Status value."""
    reward: float | None = None
    """Filled in by the scorer."""
    tree_id: str = ""
    """Id of the tree this trajectory grew in, unique per tree; "" when unknown (then the uid stands for it)."""

    def to_dict(self) -> dict[str, Any]:
        return _flat_fields(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trajectory:
        return cls(**_checked_fields(cls, data))


@dataclass
class TreeStats:
    """Counters of one prompt's sampling."""

    decoded_tokens: int = 0
    """Tokens the engine returned for this prompt, including those discarded after EOS or beyond w."""
    requests: int = 0
    """Generation requests sent."""
    rounds: int = 0
    """Rounds (one segment per active path) completed."""
    fallbacks: int = 0
    """Times the prompt ran out of active paths before w trajectories and restarted from a cut."""
    discarded: int = 0
    """Terminated or still active paths dropped because the prompt already had w trajectories."""
    statuses: dict[str, int] = field(default_factory=dict)
    """Count of each termination status among the kept trajectories."""

    def to_dict(self) -> dict[str, Any]:
        return _flat_fields(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TreeStats:
        return cls(**_checked_fields(cls, data))


@dataclass
class TreeResult:
    """A prompt's finished tree: exactly w trajectories and the counters."""

    uid: str
    trajectories: list[Trajectory]
    stats: TreeStats
    tree_id: str = ""
    """Unique id of this tree; every trajectory carries it too."""

    @property
    def trajectory_tokens(self) -> int:
        """Response tokens over all trajectories: what independent sampling decodes for the same trajectories."""
        return sum(len(t.response_ids) for t in self.trajectories)

    @property
    def mean_depth(self) -> float:
        """Mean number of segments per trajectory."""
        return sum(len(t.segment_ids) for t in self.trajectories) / max(len(self.trajectories), 1)

    def to_dict(self) -> dict[str, Any]:
        return {"uid": self.uid, "trajectories": [t.to_dict() for t in self.trajectories],
                "stats": self.stats.to_dict(), "tree_id": self.tree_id}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TreeResult:
        data = _checked_fields(cls, data)
        return cls(uid=data["uid"], trajectories=[Trajectory.from_dict(t) for t in data["trajectories"]],
                   stats=TreeStats.from_dict(data["stats"]), tree_id=data.get("tree_id", ""))


def _flat_fields(record: Trajectory | TreeStats) -> dict[str, Any]:
    # dataclasses.asdict deep-copies element by element; these fields hold flat lists and dicts of plain values,
    # so a copy of each container is the same dict, several times faster for the sample stream.
    out = {}
    for item in fields(record):
        value = getattr(record, item.name)
        out[item.name] = list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value
    return out


def _checked_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    unknown, missing = sorted(set(data) - names), sorted(required - set(data))
    if unknown or missing:
        raise ValueError(f"{cls.__name__}.from_dict: unknown fields {unknown}, missing fields {missing}")
    return data
