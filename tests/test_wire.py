"""Wire format: round trips, zero-copy frames, refusals, and a fuzz test that garbage only ever raises WireError."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zrl import wire
from zrl.wire import WireError, decode, encode


def _assert_tree_equal(got, want):
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype.newbyteorder("<") and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    elif isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got, want.contiguous())
    elif isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want)
        for key in want:
            _assert_tree_equal(got[key], want[key])
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, list) and len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            _assert_tree_equal(g, w)
    else:
        assert got == want and type(got) is type(want)


@pytest.mark.parametrize("dtype", list(wire.DTYPES))
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 3, 4), (1000, 3)])
def test_ndarray_round_trip_for_every_allowed_dtype(dtype, shape):
    rng = np.random.default_rng(0)
    array = np.asarray(rng.random(shape) * 100).astype(dtype)
    frames = encode({"x": array})
    assert len(frames) == (2 if array.nbytes > wire.INLINE_MAX_BYTES else 1)
    _assert_tree_equal(decode(frames), {"x": array})


def test_nested_structures_round_trip():
    message = {
        "id": 7, "ok": True, "none": None, "pi": 3.5, "name": "généré", "raw": b"\x00\xff",
        "tokens": [1, 2, 3], "nested": {"a": [np.arange(5), {"b": np.ones((600, 2), np.float16)}]},
        3: "int keys survive", "tuple": (1, "two"),
    }
    _assert_tree_equal(decode(encode(message)), message)


def test_numpy_scalars_encode_as_python_numbers():
    assert decode(encode([np.float32(1.5), np.int64(3), np.bool_(True)])) == [1.5, 3, True]


def test_non_contiguous_and_big_endian_arrays_arrive_as_little_endian_c_order():
    array = np.arange(4000, dtype=">i4").reshape(40, 100)[:, ::3]
    got = decode(encode(array))
    assert got.dtype == np.dtype("<i4") and got.flags.c_contiguous
    np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.bool, torch.uint8])
@pytest.mark.parametrize("numel", [0, 5, 5000])
def test_torch_tensors_round_trip_as_tensors(dtype, numel):
    tensor = (torch.arange(numel) % 7).to(dtype)
    _assert_tree_equal(decode(encode({"t": tensor})), {"t": tensor})


def test_non_contiguous_tensor_with_grad_round_trips():
    tensor = torch.randn(30, 40, requires_grad=True)[:, ::2]
    got = decode(encode(tensor))
    assert torch.equal(got, tensor.detach())


def test_large_arrays_are_separate_frames_and_decode_without_copying():
    array = np.arange(100_000, dtype=np.float32)
    frames = encode({"x": array, "small": np.arange(3)})
    assert len(frames) == 2 and memoryview(frames[1]).nbytes == array.nbytes
    assert np.shares_memory(np.frombuffer(frames[1], np.uint8), array), "encode copied the array"
    received = [bytes(frames[0]), bytearray(frames[1])]
    got = decode(received)["x"]
    assert np.shares_memory(got, np.frombuffer(received[1], np.uint8)), "decode copied the frame"


@pytest.mark.parametrize("value", [
    np.array([object()], dtype=object), np.array(["a"]), np.zeros(2, "datetime64[s]"), object(), {1, 2},
    torch.zeros(2).to(torch.float8_e4m3fn),
])
def test_values_outside_the_whitelist_are_refused_on_encode(value):
    with pytest.raises(WireError):
        encode({"field": value})


def _ext(code, fields):
    return msgpack.ExtType(code, msgpack.packb(fields, use_bin_type=True))


@pytest.mark.parametrize("frames, fragment", [
    ([], "at least one frame"),
    ([b"\xc1"], "malformed"),
    ([msgpack.packb({"no": "envelope"})], "version, body"),
    ([msgpack.packb([99, 1])], "wire version"),
    ([msgpack.packb([1, _ext(9, ["float32", [1], b"abcd"])])], "unknown extension"),
    ([msgpack.packb([1, _ext(1, ["object", [1], b"abcdefgh"])])], "not allowed"),
    ([msgpack.packb([1, _ext(1, ["float32", [2], b"abcd"])])], "needs 8 bytes"),
    ([msgpack.packb([1, _ext(1, ["float32", [-1], b"abcd"])])], "bad array shape"),
    ([msgpack.packb([1, _ext(1, ["uint8", [2**50, 2], 0])]), b"x"], "bad array shape"),
    ([msgpack.packb([1, _ext(1, ["uint8", [2**30, 2**30], 0])]), b"x"], "needs"),
    ([msgpack.packb([1, _ext(1, ["uint8", [1], 1])]), b"x"], "references frame 1"),
    ([msgpack.packb([1, _ext(1, ["uint8", [1], 0])])], "references frame 0, but the message has 0 buffer frames"),
    ([msgpack.packb([1, _ext(1, ["uint8", [1]])])], r"\[dtype, shape, data\]"),
    ([msgpack.packb([1, [_ext(1, ["uint8", [1], 0]), _ext(1, ["uint8", [1], 0])]]), b"x"], "twice"),
    ([msgpack.packb([1, None]), b"stray"], "not referenced"),
    ([b"\x92\x01" + b"\x91" * 100_000], "malformed"),
])
def test_malformed_messages_raise_wire_error_naming_the_fault(frames, fragment):
    with pytest.raises(WireError, match=fragment):
        decode(frames)


def test_non_list_input_raises_wire_error():
    for bad in (None, 5, [None], [object()]):
        with pytest.raises(WireError):
            decode(bad)


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=False),
                  st.text(max_size=8), st.binary(max_size=8),
                  st.integers(0, 300).map(lambda n: np.arange(n, dtype=np.int32)))
_tree = st.recursive(_leaf, lambda children: st.one_of(st.lists(children, max_size=4),
                                                       st.dictionaries(st.text(max_size=4), children, max_size=4)),
                     max_leaves=10)


def _mutate(frames: list[bytes], data: st.DataObject) -> list[bytes]:
    frames = [bytes(frame) for frame in frames]
    operation = data.draw(st.sampled_from(["flip", "truncate", "insert", "drop_frame", "dup_frame", "swap"]))
    index = data.draw(st.integers(0, len(frames) - 1))
    frame = frames[index]
    if operation == "flip" and frame:
        position = data.draw(st.integers(0, len(frame) - 1))
        frames[index] = frame[:position] + bytes([data.draw(st.integers(0, 255))]) + frame[position + 1:]
    elif operation == "truncate":
        frames[index] = frame[:data.draw(st.integers(0, len(frame)))]
    elif operation == "insert":
        position = data.draw(st.integers(0, len(frame)))
        frames[index] = frame[:position] + data.draw(st.binary(min_size=1, max_size=8)) + frame[position:]
    elif operation == "drop_frame":
        del frames[index]
    elif operation == "dup_frame":
        frames.insert(index, frame)
    elif operation == "swap" and len(frames) > 1:
        frames[0], frames[-1] = frames[-1], frames[0]
    return frames


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_decode_raises_only_wire_error(data):
    kind = data.draw(st.sampled_from(["bytes", "frames", "mutation", "mutation"]))
    if kind == "bytes":
        frames = [data.draw(st.binary(max_size=64))]
    elif kind == "frames":
        frames = data.draw(st.lists(st.binary(max_size=32), max_size=4))
    else:
        original = data.draw(_tree)
        if data.draw(st.booleans()):
            original = [original, np.arange(data.draw(st.integers(257, 400)), dtype=np.float32)]
        frames = _mutate(encode(original), data)
    try:
        decode(frames)
    except WireError:
        pass
