"""The messages the TreePO workers exchange, as typed values, and their wire form.

Every message is a map of named fields (`to_wire`), sent with `zrl.wire` over a stream:

Inference stream, one answer per request:

    rollout -> policy   GenerationRequestMessage
        {"prefix": [int], "max_new_tokens": int, "temperature": float, "top_p": float, "seed": int | None}
        Continue the token ids `prefix` by at most `max_new_tokens` tokens. `temperature`, `top_p` and `seed`
        may be left out: they then default to those of `zrl.engines.base.SamplingParams`.
    policy -> rollout   GenerationResponse
        {"tokens": [int], "logprobs": [float], "eos": bool, "version": int}
        The new tokens, the logprob of each, whether the last one is EOS, and the policy version of the weights
        that produced them.
    policy -> rollout   GenerationRefusal, instead of a response
        {"error": str}
        The request was malformed (the text names the field) or the engine refused it; the other requests of the
        batch are still answered.

Sample stream, and the trainer group's broadcast of each step's batch (rank 0 -> the other trainers):

    rollout -> trainer  TreeSample
        {"tree": TreeResult.to_dict(), "problem_uid": str, "producer": worker id, "incarnation": str, "epoch": int,
         "shard_position": int | None, "gen_s": float, "reward_s": float}
        A finished tree (the fields of `zrl.rl.tree.TreeResult`, `Trajectory` and `TreeStats`) of at least one
        trajectory, each scored, with a prompt, one logprob per response token, and one token count and version
        per segment, the counts summing to the response's length. `incarnation` names the producing process (a
        relaunched worker gets a new one), so the trainer counts what reached it from each and the sample
        accounting tells lost samples from those in flight. `shard_position` is the problem's position in the
        producer's shard (None: unknown); `gen_s` and `reward_s` are the seconds the tree took to sample and to
        score. Only `tree` is required.

`from_wire` checks every field of a received message and raises `zrl.wire.WireError`, and nothing else, naming the
first field that is wrong. Everywhere: an int is an int64 >= 0 (a bool is not an int); a float is finite (an int is
taken for a float); keys a message does not define are ignored, so a sender may add fields.
"""

from __future__ import annotations

import functools
import math
import reprlib
import types
import typing
from dataclasses import MISSING, dataclass, fields, is_dataclass
from typing import Annotated, Any, ClassVar, NoReturn, TypeVar

from zrl.engines.base import GenerationRequest, GenerationResult, SamplingParams
from zrl.rl.tree import Status, Trajectory, TreeResult
from zrl.wire import WireError

INT_END = 2**63
"""Ints on the wire lie in [0, INT_END)."""
_STATUSES = frozenset(status.value for status in Status)
_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict = 2, 40, 40, 4, 4


@dataclass(frozen=True)
class Within:
    """The range a float field (or each float of a list field) must lie in, given as its type's metadata."""

    low: float
    high: float = math.inf
    low_excluded: bool = False

    def admits(self, value: float) -> bool:
        return (value > self.low if self.low_excluded else value >= self.low) and value <= self.high

    def __str__(self) -> str:
        low = f"{'>' if self.low_excluded else '>='} {self.low:g}"
        return low if self.high == math.inf else f"{low} and <= {self.high:g}"


_Message = TypeVar("_Message", bound="WireMessage")


class WireMessage:
    """A message between workers: a frozen dataclass whose fields are its wire form's keys."""

    wire_name: ClassVar[str]
    """What the message is, to start the text of a WireError."""

    def to_wire(self) -> dict[str, Any]:
        return {item.name: _to_wire(getattr(self, item.name)) for item in fields(self)}

    @classmethod
    def from_wire(cls: type[_Message], payload: object) -> _Message:
        """The message `payload` encodes; WireError names the first field that is wrong."""
        message = _decode_record(cls, payload, cls.wire_name, "")
        message._check()
        return message

    def _check(self) -> None:
        """Check what the types of single fields cannot say (how fields agree); call `_fault` if wrong."""

    def _fault(self, path: str, problem: str) -> NoReturn:
        _fail(self.wire_name, path, problem)


@dataclass(frozen=True)
class GenerationRequestMessage(WireMessage):
    wire_name: ClassVar[str] = "generation request"

    prefix: list[int]
    max_new_tokens: int
    temperature: Annotated[float, Within(0.0)] = SamplingParams.temperature
    top_p: Annotated[float, Within(0.0, 1.0, low_excluded=True)] = SamplingParams.top_p
    seed: int | None = SamplingParams.seed

    @classmethod
    def from_generation(cls, request: GenerationRequest) -> GenerationRequestMessage:
        sampling = request.sampling
        return cls(request.prefix_ids, request.max_new_tokens, sampling.temperature, sampling.top_p, sampling.seed)

    def to_generation(self, request_id: str) -> GenerationRequest:
        return GenerationRequest(self.prefix, self.max_new_tokens,
                                 SamplingParams(self.temperature, self.top_p, self.seed), request_id)


@dataclass(frozen=True)
class GenerationResponse(WireMessage):
    wire_name: ClassVar[str] = "generation response"

    tokens: list[int]
    logprobs: list[float]
    eos: bool
    version: int

    @classmethod
    def from_result(cls, result: GenerationResult) -> GenerationResponse:
        return cls(result.token_ids, result.logprobs, result.eos, result.version)

    def to_result(self, request_id: str) -> GenerationResult:
        return GenerationResult(request_id, self.tokens, self.logprobs, self.eos, self.version)

    def _check(self) -> None:
        if len(self.logprobs) != len(self.tokens):
            self._fault("logprobs", f"expected one per token ({len(self.tokens)}), got {len(self.logprobs)}")


@dataclass(frozen=True)
class GenerationRefusal(WireMessage):
    wire_name: ClassVar[str] = "generation refusal"

    error: str


def generation_answer_from_wire(payload: object) -> GenerationResponse | GenerationRefusal:
    """The policy's answer to a generation request: a refusal when it has an "error" field, else a response."""
    if isinstance(payload, dict) and "error" in payload:
        return GenerationRefusal.from_wire(payload)
    return GenerationResponse.from_wire(payload)


@dataclass(frozen=True)
class TreeSample(WireMessage):
    wire_name: ClassVar[str] = "tree sample"

    tree: TreeResult
    problem_uid: str = ""
    producer: str = ""
    incarnation: str = ""
    epoch: int = 0
    shard_position: int | None = None
    gen_s: Annotated[float, Within(0.0)] = 0.0
    reward_s: Annotated[float, Within(0.0)] = 0.0

    def _check(self) -> None:
        # What the trainer relies on when it steps on the tree: a wrong one would fail the step, not be dropped.
        if not self.tree.trajectories:
            self._fault("tree.trajectories", "expected at least one trajectory, got none")
        for index, trajectory in enumerate(self.tree.trajectories):
            fault = _trajectory_fault(trajectory)
            if fault is not None:
                self._fault(f"tree.trajectories[{index}].{fault[0]}", fault[1])


def _trajectory_fault(t: Trajectory) -> tuple[str, str] | None:
    """(field, problem) of the first way `t` is not a scored trajectory whose lengths agree; None if it is."""
    segments = len(t.segment_ids)
    if not t.prompt_ids:
        return "prompt_ids", "expected at least one prompt token, got none"
    if len(t.logprobs) != len(t.response_ids):
        return "logprobs", f"expected one per response token ({len(t.response_ids)}), got {len(t.logprobs)}"
    if len(t.segment_tokens) != segments or len(t.versions) != segments:
        wrong = "segment_tokens" if len(t.segment_tokens) != segments else "versions"
        return wrong, f"expected one per segment ({segments}), got {len(getattr(t, wrong))}"
    if sum(t.segment_tokens) != len(t.response_ids):
        return "segment_tokens", f"sum to {sum(t.segment_tokens)}, but there are {len(t.response_ids)} response tokens"
    if t.status not in _STATUSES:
        return "status", f"expected one of {sorted(_STATUSES)}, got {_show(t.status)}"
    if t.reward is None:
        return "reward", "expected the score (a finite number), got None"
    return None


# ---- encoding and checking by the fields' types ----


def _to_wire(value: Any) -> Any:
    return value.to_dict() if is_dataclass(value) else value


def _fail(what: str, path: str, problem: str) -> NoReturn:
    raise WireError(f"{what}: field '{path}': {problem}" if path else f"{what}: {problem}")


@functools.cache
def _schema(cls: type) -> tuple[tuple[str, Any, bool], ...]:
    """(name, type, required) of each field of a dataclass."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return tuple((item.name, hints[item.name], item.default is MISSING and item.default_factory is MISSING)
                 for item in fields(cls) if item.init)


def _decode_record(cls: type, payload: object, what: str, path: str) -> Any:
    if type(payload) is not dict:
        _fail(what, path, f"expected a map of fields, got {_show(payload)}")
    values = {}
    for name, hint, required in _schema(cls):
        where = f"{path}.{name}" if path else name
        if name in payload:
            values[name] = _decode(payload[name], hint, what, where)
        elif required:
            _fail(what, where, "missing")
    return cls(**values)


def _decode(value: object, hint: Any, what: str, path: str) -> Any:
    """`value` checked against the field type `hint` (converted where the wire form differs: an int for a float)."""
    base, within = _unannotated(hint)
    origin, args = typing.get_origin(base), typing.get_args(base)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (base,) = (arg for arg in args if arg is not type(None))
        return _decode(value, Annotated[base, within] if within else base, what, path)
    if origin is list:
        return _decode_list(value, args[0], what, path)
    if origin is dict:
        return _decode_dict(value, args, what, path)
    if is_dataclass(base):
        return _decode_record(base, value, what, path)
    fault = _scalar_fault(value, base, within)
    if fault is not None:
        _fail(what, path, fault)
    return _as_float(value) if base is float else value


def _decode_list(value: object, item: Any, what: str, path: str) -> list[Any]:
    if type(value) is not list:
        _fail(what, path, f"expected a list, got {_show(value)}")
    if _all_valid(value, item):
        return value
    return [_decode(element, item, what, f"{path}[{index}]") for index, element in enumerate(value)]


def _all_valid(values: list[Any], item: Any) -> bool:
    """Whether every element is a valid int or float of type `item`, checked fast (token ids and logprobs are long);
    False also when `item` is another type or a float list holds ints (they need converting)."""
    base, within = _unannotated(item)
    if base is int:
        return all(type(v) is int for v in values) and (not values or (min(values) >= 0 and max(values) < INT_END))
    if base is float:
        return (all(type(v) is float for v in values) and all(map(math.isfinite, values))
                and (not values or within is None or (within.admits(min(values)) and within.admits(max(values)))))
    return False


def _decode_dict(value: object, args: tuple[Any, ...], what: str, path: str) -> dict[Any, Any]:
    if type(value) is not dict:
        _fail(what, path, f"expected a map, got {_show(value)}")
    key_type, value_type = args
    return {_decode(key, key_type, what, f"{path} (a key)"): _decode(element, value_type, what, f"{path}[{_show(key)}]")
            for key, element in value.items()}


def _unannotated(hint: Any) -> tuple[Any, Within | None]:
    if typing.get_origin(hint) is Annotated:
        base, *metadata = typing.get_args(hint)
        return base, next((m for m in metadata if isinstance(m, Within)), None)
    return hint, None


def _scalar_fault(value: object, base: Any, within: Within | None) -> str | None:
    """Why `value` is not a valid `base` (int, float, bool or str); None when it is."""
    if base is int:
        if type(value) is not int:
            return f"expected an int, got {_show(value)}"
        return None if 0 <= value < INT_END else f"expected an int >= 0 and < 2**63, got {_show(value)}"
    if base is float:
        if type(value) not in (int, float):
            return f"expected a number, got {_show(value)}"
        if not math.isfinite(_as_float(value)):
            return f"expected a finite number, got {_show(value)}"
        return None if within is None or within.admits(value) else f"expected a number {within}, got {_show(value)}"
    if base is bool:
        return None if type(value) is bool else f"expected a bool, got {_show(value)}"
    if base is str:
        return None if type(value) is str else f"expected a string, got {_show(value)}"
    raise TypeError(f"a message field of type {base!r} has no wire form")


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _show(value: object) -> str:
    """A short text of a received value, for an error message."""
    try:
        return _repr.repr(value)
    except Exception:  # noqa: BLE001 - e.g. an int too long to print: the message must still be made
        return f"a value of type {type(value).__name__}"
