"""The workers' messages: round trips over the wire, the defaults of left-out fields, a WireError naming each wrong
field, and a fuzz test that garbage given to any `from_wire` only ever raises WireError."""

from __future__ import annotations

import copy
import math
import re
from dataclasses import MISSING, fields
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zrl import wire
from zrl.engines.base import GenerationRequest, GenerationResult, SamplingParams
from zrl.rl.tree import Trajectory, TreeResult, TreeStats
from zrl.wire import WireError
from zrl.workers.messages import (
    GenerationRefusal,
    GenerationRequestMessage,
    GenerationResponse,
    TreeSample,
    generation_answer_from_wire,
)


def trajectory(index: int = 0) -> Trajectory:
    return Trajectory(uid="p1", prompt_ids=[5, 6], response_ids=[7, 8, 9], logprobs=[-0.5, -1.5, -0.25],
                      segment_ids=[0, index + 1], segment_tokens=[2, 1], versions=[3, 4], status="finished",
                      reward=float(index), tree_id="p1@0#1")


def tree_sample() -> TreeSample:
    tree = TreeResult("p1", [trajectory(0), trajectory(1)],
                      TreeStats(decoded_tokens=6, requests=3, rounds=2, statuses={"finished": 2}), "p1@0#1")
    return TreeSample(tree, problem_uid="p1", producer="rollout/0", incarnation="rollout/0#ab12", epoch=2,
                      shard_position=17, gen_s=1.5, reward_s=0.25)


MESSAGES = {
    "request": GenerationRequestMessage([1, 2, 3], 8, temperature=0.7, top_p=0.9, seed=12),
    "response": GenerationResponse([4, 5], [-0.1, -2.0], eos=True, version=3),
    "refusal": GenerationRefusal("the prompt is too long"),
    "tree sample": tree_sample(),
}


def over_the_wire(payload: Any) -> Any:
    return wire.decode([bytes(frame) for frame in wire.encode(payload)])


@pytest.mark.parametrize("name", MESSAGES)
def test_every_message_round_trips_over_the_wire(name):
    message = MESSAGES[name]
    assert type(message).from_wire(over_the_wire(message.to_wire())) == message


def test_the_wire_forms_keep_the_keys_the_workers_always_sent():
    assert list(MESSAGES["request"].to_wire()) == ["prefix", "max_new_tokens", "temperature", "top_p", "seed"]
    assert list(MESSAGES["response"].to_wire()) == ["tokens", "logprobs", "eos", "version"]
    assert MESSAGES["refusal"].to_wire() == {"error": "the prompt is too long"}
    sample = MESSAGES["tree sample"]
    assert sample.to_wire() == {"tree": sample.tree.to_dict(), "problem_uid": "p1", "producer": "rollout/0",
                                "incarnation": "rollout/0#ab12", "epoch": 2, "shard_position": 17, "gen_s": 1.5,
                                "reward_s": 0.25}


def test_left_out_fields_take_the_defaults_of_the_dataclass_and_sampling_params():
    request = GenerationRequestMessage.from_wire({"prefix": [1], "max_new_tokens": 2})
    assert (request.temperature, request.top_p, request.seed) == (SamplingParams.temperature, SamplingParams.top_p,
                                                                  SamplingParams.seed)
    sample = TreeSample.from_wire({"tree": tree_sample().tree.to_dict()})
    assert sample == TreeSample(tree_sample().tree)
    assert sample.shard_position is None and sample.producer == ""


def test_ints_are_taken_for_floats_and_unknown_keys_are_ignored():
    request = GenerationRequestMessage.from_wire({"prefix": [1], "max_new_tokens": 2, "temperature": 1,
                                                  "newer_field": "x"})
    assert request.temperature == 1.0 and type(request.temperature) is float
    response = GenerationResponse.from_wire({"tokens": [1, 2], "logprobs": [0, -1.5], "eos": False, "version": 0})
    assert response.logprobs == [0.0, -1.5] and all(type(v) is float for v in response.logprobs)


def test_requests_and_responses_convert_to_and_from_the_engine_types():
    request = GenerationRequest([1, 2], 4, SamplingParams(0.5, 0.8, 3), "p1#0")
    message = GenerationRequestMessage.from_generation(request)
    assert message == GenerationRequestMessage([1, 2], 4, 0.5, 0.8, 3)
    assert message.to_generation("p1#0") == request
    result = GenerationResult("p1#0", [7], [-0.5], True, 2)
    assert GenerationResponse.from_result(result).to_result("p1#0") == result


def test_an_answer_with_an_error_is_a_refusal_and_any_other_a_response():
    assert generation_answer_from_wire({"error": "no"}) == GenerationRefusal("no")
    assert generation_answer_from_wire(MESSAGES["response"].to_wire()) == MESSAGES["response"]
    with pytest.raises(WireError, match="generation response: field 'tokens': missing"):
        generation_answer_from_wire({"tokens_": []})
    with pytest.raises(WireError, match="generation refusal: field 'error': expected a string, got None"):
        generation_answer_from_wire({"error": None})


def required_fields(cls: type) -> list[str]:
    return [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]


REQUIRED = [(name, field) for name, message in MESSAGES.items() for field in required_fields(type(message))]
NESTED_REQUIRED = [(("uid",), "tree.uid"), (("trajectories",), "tree.trajectories"), (("stats",), "tree.stats"),
                   (("trajectories", 0, "uid"), "tree.trajectories[0].uid"),
                   (("trajectories", 0, "response_ids"), "tree.trajectories[0].response_ids"),
                   (("trajectories", 1, "logprobs"), "tree.trajectories[1].logprobs"),
                   (("trajectories", 1, "status"), "tree.trajectories[1].status")]


@pytest.mark.parametrize("name, field", REQUIRED)
def test_a_missing_required_field_is_named(name, field):
    message = MESSAGES[name]
    payload = message.to_wire()
    del payload[field]
    with pytest.raises(WireError, match=rf"^{type(message).wire_name}: field '{field}': missing$"):
        type(message).from_wire(payload)


@pytest.mark.parametrize("path, named", NESTED_REQUIRED)
def test_a_missing_field_of_the_tree_is_named_with_its_path(path, named):
    payload = tree_sample().to_wire()
    *parents, last = path
    node = payload["tree"]
    for key in parents:
        node = node[key]
    del node[last]
    with pytest.raises(WireError, match=f"^tree sample: field '{re.escape(named)}': missing$"):
        TreeSample.from_wire(payload)


def wrong_value(value: Any) -> Any:
    """A value of another type than `value`: a string for everything but strings, an int for strings."""
    return 5 if isinstance(value, str) else "abc"


@pytest.mark.parametrize("name, field", [(name, field) for name, message in MESSAGES.items()
                                         for field in message.to_wire()])
def test_a_field_of_the_wrong_type_is_named(name, field):
    message = MESSAGES[name]
    payload = message.to_wire()
    payload[field] = wrong_value(payload[field])
    with pytest.raises(WireError, match=rf"^{type(message).wire_name}: field '{field}': expected"):
        type(message).from_wire(payload)


@pytest.mark.parametrize("field", list(trajectory().to_dict()))
def test_a_trajectory_field_of_the_wrong_type_is_named(field):
    payload = tree_sample().to_wire()
    payload["tree"]["trajectories"][1][field] = wrong_value(payload["tree"]["trajectories"][1][field])
    with pytest.raises(WireError, match=rf"^tree sample: field 'tree\.trajectories\[1\]\.{field}': expected"):
        TreeSample.from_wire(payload)


REQUEST = {"prefix": [1, 2], "max_new_tokens": 4}


@pytest.mark.parametrize("change, fault", [
    ({"max_new_tokens": "abc"}, "field 'max_new_tokens': expected an int, got 'abc'"),
    ({"max_new_tokens": True}, "field 'max_new_tokens': expected an int, got True"),
    ({"max_new_tokens": -1}, "field 'max_new_tokens': expected an int >= 0"),
    ({"max_new_tokens": 2**63}, "field 'max_new_tokens': expected an int >= 0 and < 2\\*\\*63"),
    ({"prefix": [1, "2"]}, r"field 'prefix\[1\]': expected an int, got '2'"),
    ({"prefix": [1, -2]}, r"field 'prefix\[1\]': expected an int >= 0"),
    ({"prefix": (1, 2)}, "field 'prefix': expected a list"),
    ({"temperature": math.nan}, "field 'temperature': expected a finite number, got nan"),
    ({"temperature": -0.5}, "field 'temperature': expected a number >= 0, got -0.5"),
    ({"temperature": "hot"}, "field 'temperature': expected a number, got 'hot'"),
    ({"top_p": 0.0}, "field 'top_p': expected a number > 0 and <= 1, got 0.0"),
    ({"top_p": 1.5}, "field 'top_p': expected a number > 0 and <= 1, got 1.5"),
    ({"seed": 1.5}, "field 'seed': expected an int, got 1.5"),
])
def test_a_request_field_out_of_its_range_is_named(change, fault):
    with pytest.raises(WireError, match=rf"^generation request: {fault}"):
        GenerationRequestMessage.from_wire({**REQUEST, **change})


@pytest.mark.parametrize("change, fault", [
    ({"logprobs": [-0.1]}, r"field 'logprobs': expected one per token \(2\), got 1"),
    ({"logprobs": [-0.1, math.inf]}, r"field 'logprobs\[1\]': expected a finite number, got inf"),
    ({"logprobs": [-0.1, True]}, r"field 'logprobs\[1\]': expected a number, got True"),
    ({"eos": 1}, "field 'eos': expected a bool, got 1"),
    ({"version": -3}, "field 'version': expected an int >= 0"),
])
def test_a_response_field_out_of_its_range_is_named(change, fault):
    with pytest.raises(WireError, match=rf"^generation response: {fault}"):
        GenerationResponse.from_wire({**MESSAGES["response"].to_wire(), **change})


def trajectory_change(**change: Any) -> dict[str, Any]:
    payload = tree_sample().to_wire()
    payload["tree"]["trajectories"][1].update(change)
    return payload


@pytest.mark.parametrize("payload, fault", [
    (trajectory_change(logprobs=[-1.0]), r"trajectories\[1\]\.logprobs': expected one per response token \(3\)"),
    (trajectory_change(versions=[1]), r"trajectories\[1\]\.versions': expected one per segment \(2\), got 1"),
    (trajectory_change(segment_tokens=[2, 2]), r"trajectories\[1\]\.segment_tokens': sum to 4, but there are 3"),
    (trajectory_change(prompt_ids=[]), r"trajectories\[1\]\.prompt_ids': expected at least one prompt token"),
    (trajectory_change(reward=None), r"trajectories\[1\]\.reward': expected the score"),
    (trajectory_change(reward=math.nan), r"trajectories\[1\]\.reward': expected a finite number"),
    (trajectory_change(status="bored"), r"trajectories\[1\]\.status': expected one of"),
    (trajectory_change(segment_ids=[0, -1]), r"trajectories\[1\]\.segment_ids\[1\]': expected an int >= 0"),
    ({"tree": {**tree_sample().tree.to_dict(), "trajectories": []}}, r"tree\.trajectories': expected at least one"),
    ({"tree": {**tree_sample().tree.to_dict(), "stats": {"statuses": {"finished": "2"}}}},
     r"tree\.stats\.statuses\['finished'\]': expected an int, got '2'"),
    ({"tree": [1]}, "field 'tree': expected a map of fields, got \\[1\\]"),
    ({**tree_sample().to_wire(), "gen_s": -0.5}, "field 'gen_s': expected a number >= 0, got -0.5"),
    ({**tree_sample().to_wire(), "shard_position": -1}, "field 'shard_position': expected an int >= 0"),
])
def test_a_tree_the_trainer_could_not_step_on_is_refused_naming_the_field(payload, fault):
    with pytest.raises(WireError, match=rf"^tree sample: .*{fault}"):
        TreeSample.from_wire(payload)


def test_a_payload_that_is_not_a_map_is_refused():
    for cls in (GenerationRequestMessage, GenerationResponse, GenerationRefusal, TreeSample):
        for payload in (None, [1], "x", 3, b"\x00"):
            with pytest.raises(WireError, match=rf"^{cls.wire_name}: expected a map of fields"):
                cls.from_wire(payload)


# ---- fuzz ----

_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), st.binary(max_size=8))
_garbage = st.recursive(_leaf, lambda children: st.one_of(st.lists(children, max_size=4),
                                                          st.dictionaries(st.one_of(st.text(max_size=6), st.integers()),
                                                                          children, max_size=4)),
                        max_leaves=10)

PARSERS = {
    "request": GenerationRequestMessage.from_wire,
    "response": GenerationResponse.from_wire,
    "refusal": GenerationRefusal.from_wire,
    "answer": generation_answer_from_wire,
    "tree sample": TreeSample.from_wire,
}
VALID = {**{name: message.to_wire() for name, message in MESSAGES.items()}, "answer": MESSAGES["response"].to_wire()}


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """The path (keys and indexes) of every value inside `node`."""
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    paths = []
    for key, child in children:
        paths.append((*prefix, key))
        paths.extend(_paths(child, (*prefix, key)))
    return paths


def _mutated(payload: Any, data: st.DataObject) -> Any:
    """`payload` with one value inside it replaced by garbage or removed, or a key added."""
    payload = copy.deepcopy(payload)
    *parents, last = data.draw(st.sampled_from(_paths(payload)))
    node = payload
    for key in parents:
        node = node[key]
    operation = data.draw(st.sampled_from(["replace", "replace", "remove", "add"]))
    if operation == "replace":
        node[last] = data.draw(_garbage)
    elif operation == "remove":
        del node[last]
    elif isinstance(node, dict):
        node[data.draw(st.text(max_size=6))] = data.draw(_garbage)
    else:
        node.insert(last, data.draw(_garbage))
    return payload


@pytest.mark.parametrize("name", PARSERS)
@settings(max_examples=2_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_from_wire_raises_only_wire_error(name, data):
    if data.draw(st.booleans()):
        payload = data.draw(_garbage)
    else:
        payload = _mutated(VALID[name], data)
    try:
        PARSERS[name](payload)
    except WireError:
        pass
