"""Wire format of every zrl stream: msgpack, with numpy arrays and torch tensors as zero-copy frames.

A message is a list of ZeroMQ frames::

    frame 0      msgpack body: the array [WIRE_VERSION, obj]
    frame 1..n   raw array buffers, C order, little-endian, referenced from frame 0 by index

`obj` is any tree of None, bool, int, float, str, bytes, list/tuple (decoded as list) and dict, with
numpy arrays and torch tensors as msgpack extension types:

    ext 1 (numpy ndarray)  payload = msgpack [dtype, shape, data]
    ext 2 (torch tensor)   payload = msgpack [dtype, shape, data]

where `dtype` is a name from `DTYPES` (no object dtype), `shape` a list of non-negative ints, and
`data` either the raw bytes inline (arrays of at most `INLINE_MAX_BYTES`) or an int `k` that names
frame `1 + k`. Every buffer frame is referenced exactly once. Big arrays are sent without copying
(pyzmq `copy=False`) and decoded with `np.frombuffer`, so a decoded array is read-only and shares the
received frame's memory; a decoded tensor shares it too.

`decode` raises `WireError`, and nothing else, for any input that is not a valid message: a peer
that can reach a socket can make the receiver drop its message, never crash it or run code.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

WIRE_VERSION = 1
EXT_NDARRAY = 1
EXT_TENSOR = 2
INLINE_MAX_BYTES = 1024
"""Arrays up to this many bytes travel inside frame 0; larger ones get their own frame."""
MAX_NDIM = 32
_PACK_BUF_SIZE = 4096

Frame = bytes | memoryview

DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                 "float16", "float32", "float64", "complex64", "complex128")
}
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
# numpy has no bfloat16: such tensors travel as their 16-bit pattern and are viewed back on arrival.
_TENSOR_ONLY_DTYPES = {"bfloat16": np.dtype("<u2")}
# msgpack of "a 3-element array whose first element is the dtype name", per dtype.
_ARRAY_HEAD = {name: b"\x93" + msgpack.packb(name) for name in (*DTYPES, *_TENSOR_ONLY_DTYPES)}


class WireError(ValueError):
    """A message could not be encoded or decoded; the text says what was wrong and where."""


def encode(obj: Any) -> list[Frame]:
    """Encode `obj` into frames: frame 0 is the msgpack body, frames 1.. the large array buffers.

    Send them with `send_multipart(frames, copy=len(frames) == 1)`: the buffers are then not copied.
    """
    buffers: list[Frame] = []

    def default(value: Any) -> msgpack.ExtType:
        if isinstance(value, np.ndarray):
            if value.nbytes <= INLINE_MAX_BYTES and value.flags.c_contiguous:
                head = _inline_head(value.dtype, value.shape)
                if head is not None:
                    return msgpack.ExtType(EXT_NDARRAY, head + value.tobytes())
            name = _dtype_name(value.dtype)
            return _pack_array(value, name, DTYPES[name], EXT_NDARRAY, buffers)
        if isinstance(value, np.generic):
            return value.item()
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(value, torch.Tensor):
            return _pack_tensor(value, buffers)
        raise WireError(f"cannot encode a value of type {type(value).__name__}")

    try:
        # A Packer with a small initial buffer: packb() starts from a much larger one, which costs
        # more than the whole encoding of a small message.
        body = msgpack.Packer(default=default, use_bin_type=True, buf_size=_PACK_BUF_SIZE).pack([WIRE_VERSION, obj])
    except WireError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireError(f"cannot encode message: {exc}") from exc
    return [body, *buffers]


def decode(frames: Sequence[Any]) -> Any:
    """Decode the frames made by `encode` (bytes, memoryviews or zmq.Frame objects); raise WireError if invalid."""
    try:
        return _decode(frames)
    except WireError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure on untrusted bytes is a malformed message
        raise WireError(f"malformed message: {type(exc).__name__}: {exc}") from None


def _decode(frames: Sequence[Any]) -> Any:
    if not isinstance(frames, Sequence) or len(frames) == 0:
        raise WireError("a message needs at least one frame (the msgpack body)")
    if len(frames) == 1:
        # Small messages (every inference request and response) have no buffer frames: one unpack with a hook
        # made once, not the per-message closures that track buffer frames.
        return _envelope_body(msgpack.unpackb(frames[0], ext_hook=_inline_ext_hook, raw=False,
                                              strict_map_key=False, use_list=True))
    views = [memoryview(frame) for frame in frames]
    used = [False] * (len(views) - 1)

    def take_frame(index: Any) -> memoryview:
        if type(index) is not int or not 0 <= index < len(used):
            raise WireError(f"array references frame {index!r}, but the message has {len(used)} buffer frames")
        if used[index]:
            raise WireError(f"buffer frame {index} is referenced twice")
        used[index] = True
        return views[index + 1]

    def ext_hook(code: int, data: bytes) -> Any:
        name, shape, data_ref = _array_fields(code, data)
        return _unpack_array(code, name, shape, data_ref if isinstance(data_ref, bytes) else take_frame(data_ref))

    envelope = msgpack.unpackb(views[0], ext_hook=ext_hook, raw=False, strict_map_key=False, use_list=True)
    body = _envelope_body(envelope)
    if not all(used):
        raise WireError(f"{used.count(False)} of {len(used)} buffer frames are not referenced by the body")
    return body


def _envelope_body(envelope: Any) -> Any:
    if not isinstance(envelope, list) or len(envelope) != 2:
        raise WireError("frame 0 must be the msgpack array [version, body]")
    if envelope[0] != WIRE_VERSION:
        raise WireError(f"wire version {envelope[0]!r} is not the supported version {WIRE_VERSION}")
    return envelope[1]


def _array_fields(code: int, data: bytes) -> list[Any]:
    """[dtype, shape, data or buffer frame index] of an array extension."""
    if code not in (EXT_NDARRAY, EXT_TENSOR):
        raise WireError(f"unknown extension type {code}")
    fields = msgpack.unpackb(data, use_list=True, raw=False)
    if not isinstance(fields, list) or len(fields) != 3:
        raise WireError("array extension must be [dtype, shape, data]")
    return fields


def _inline_ext_hook(code: int, data: bytes) -> Any:
    """The extension hook of a message without buffer frames: every array must carry its data inline."""
    name, shape, data_ref = _array_fields(code, data)
    if not isinstance(data_ref, bytes):
        raise WireError(f"array references frame {data_ref!r}, but the message has 0 buffer frames")
    return _unpack_array(code, name, shape, data_ref)


def _dtype_name(dtype: np.dtype) -> str:
    # Native little-endian dtypes equal their "<" form; only others pay for the byte-order conversion.
    name = _DTYPE_NAMES.get(dtype) or _DTYPE_NAMES.get(dtype.newbyteorder("<"))
    if name is None:
        raise WireError(f"dtype {dtype} is not allowed on the wire (allowed: {', '.join(DTYPES)})")
    return name


def _pack_array(array: np.ndarray, name: str, dtype: np.dtype, code: int, buffers: list[Frame]) -> msgpack.ExtType:
    if array.dtype != dtype or not array.flags.c_contiguous:
        array = np.asarray(array, dtype=dtype, order="C")
    # The payload [dtype, shape, data] is assembled by hand: this runs once per array, and a
    # Packer per call would cost more than the rest of the encoding of a small array.
    head = _ARRAY_HEAD[name] + _packed_shape(array.shape)
    if array.nbytes <= INLINE_MAX_BYTES:
        return msgpack.ExtType(code, head + _bin_header(array.nbytes) + array.tobytes())
    buffers.append(memoryview(array.reshape(-1).view(np.uint8)))
    return msgpack.ExtType(code, head + msgpack.packb(len(buffers) - 1))


@functools.lru_cache(maxsize=1024)
def _inline_head(dtype: np.dtype, shape: tuple[int, ...]) -> bytes | None:
    """The ndarray payload up to the inline data, for a wire dtype; None when the array needs converting.

    Cached because small arrays are sent in bulk with few distinct shapes (one per sample of a batch).
    """
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        return None
    count = 1
    for dim in shape:
        count *= dim
    return _ARRAY_HEAD[name] + _packed_shape(shape) + _bin_header(count * dtype.itemsize)


@functools.lru_cache(maxsize=1024)
def _packed_shape(shape: tuple[int, ...]) -> bytes:
    return msgpack.packb(shape)


def _bin_header(size: int) -> bytes:
    if size < 0x100:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 0x10000:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


def _pack_tensor(tensor: Any, buffers: list[Frame]) -> msgpack.ExtType:
    torch = sys.modules["torch"]
    tensor = tensor.detach().cpu().contiguous()
    name = str(tensor.dtype).removeprefix("torch.")
    if name == "bfloat16":
        bits = _TENSOR_ONLY_DTYPES[name]
        return _pack_array(tensor.view(torch.int16).numpy().view(bits), name, bits, EXT_TENSOR, buffers)
    if name not in DTYPES:
        raise WireError(f"tensor dtype {tensor.dtype} is not allowed on the wire (allowed: {', '.join(DTYPES)})")
    return _pack_array(tensor.numpy(), name, DTYPES[name], EXT_TENSOR, buffers)


def _unpack_array(code: int, name: Any, shape: Any, data: bytes | memoryview) -> Any:
    dtype = DTYPES.get(name) if isinstance(name, str) else None
    if dtype is None and code == EXT_TENSOR and name in _TENSOR_ONLY_DTYPES:
        dtype = _TENSOR_ONLY_DTYPES[name]
    if dtype is None:
        raise WireError(f"dtype {name!r} is not allowed on the wire")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise WireError(f"bad array shape {shape!r}")
    count = 1
    for dim in shape:
        if type(dim) is not int or not 0 <= dim < 2**48:
            raise WireError(f"bad array shape {shape!r}")
        count *= dim
    size = len(data) if isinstance(data, bytes) else data.nbytes
    if count * dtype.itemsize != size:
        raise WireError(f"array of shape {shape} and dtype {name} needs {count * dtype.itemsize} bytes, got {size}")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    if code == EXT_NDARRAY:
        return array
    return _to_tensor(array, name)


def _to_tensor(array: np.ndarray, name: str) -> Any:
    import warnings

    import torch

    with warnings.catch_warnings():
        # The tensor aliases the received (read-only) frame; that is the zero-copy contract.
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(array) if array.size else torch.from_numpy(array.copy())
    return tensor.view(torch.bfloat16) if name == "bfloat16" else tensor
