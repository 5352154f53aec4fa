"""Safetensors shards written and read with their checksum computed in the same pass over the bytes.

File format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N, N bytes of
JSON header (`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, padded with
spaces so the data starts 8-byte aligned), then the raw little-endian tensor bytes. Tensors are laid out by
decreasing element size so every tensor starts aligned to its own element size and can be viewed in place.

The checksum is XXH3-128 over the whole file, hashed chunk by chunk while the chunk is hot in cache.
"""

from __future__ import annotations

import ctypes
import functools
import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import xxhash

from zrl.paramdb.errors import CorruptVersionError

CHUNK_BYTES = 8 << 20
WRITEBACK_BYTES = 64 << 20
"""Bytes written between requests to start writeback; larger batches let the disk queue work efficiently."""
CHECKSUM_NAME = "xxh3_128"

DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
CODE_DTYPES: dict[str, torch.dtype] = {code: dtype for dtype, code in DTYPE_CODES.items()}


@dataclass(frozen=True)
class FileRecord:
    """Size and checksum of one stored file, as the manifest keeps them."""

    size: int
    checksum: str


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a tensor, without a copy when it is a contiguous CPU tensor (a GPU tensor is copied)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def write_shard(path: Path, tensors: dict[str, torch.Tensor], durable: bool = True) -> FileRecord:
    """Write `tensors` as one safetensors file at `path` (which must not exist) and return its checksum.

    With `durable`, writeback starts after every WRITEBACK_BYTES written and the file is fsynced at the end,
    so the disk works while the rest is still being written.
    """
    order = sorted(tensors, key=lambda name: -tensors[name].element_size())
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in order:
        tensor = tensors[name]
        if tensor.dtype not in DTYPE_CODES:
            raise TypeError(f"tensor {name!r} has dtype {tensor.dtype}, which safetensors cannot store")
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": DTYPE_CODES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-(8 + len(header_bytes)) % 8)
    prefix = len(header_bytes).to_bytes(8, "little") + header_bytes

    hasher = xxhash.xxh3_128()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        hasher.update(prefix)
        _write_all(fd, memoryview(prefix))
        position = flushed = len(prefix)
        for name in order:
            data = tensor_bytes(tensors[name])
            for start in range(0, len(data), CHUNK_BYTES):
                chunk = data[start:start + CHUNK_BYTES]
                hasher.update(chunk)
                _write_all(fd, chunk)
                position += len(chunk)
                if durable and position - flushed >= WRITEBACK_BYTES:
                    _start_writeback(fd, flushed, position - flushed)
                    flushed = position
        if durable:
            os.fsync(fd)
    except OSError as err:
        if err.filename is None:
            err.filename = str(path)
        raise
    finally:
        os.close(fd)
    return FileRecord(size=len(prefix) + offset, checksum=hasher.hexdigest())


@functools.cache
def _sync_file_range():
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Queue dirty pages for writing without waiting (Linux `sync_file_range`); a no-op where unavailable."""
    function = _sync_file_range()
    if function is not None:
        function(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE


def _open_checked(path: Path, expected: FileRecord):
    try:
        handle = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the caller's with-block
    except FileNotFoundError as err:
        raise CorruptVersionError(f"{path}: file listed in the manifest is missing", str(path)) from err
    size = os.fstat(handle.fileno()).st_size
    if size != expected.size:
        handle.close()
        kind = "truncated" if size < expected.size else "longer than recorded"
        raise CorruptVersionError(f"{path}: file is {kind}: {size} bytes, manifest says {expected.size}",
                                  str(path))
    return handle


def _check_digest(path: Path, hasher: xxhash.xxh3_128, expected: FileRecord) -> None:
    actual = hasher.hexdigest()
    if actual != expected.checksum:
        raise CorruptVersionError(f"{path}: checksum mismatch ({CHECKSUM_NAME} {actual}, manifest says "
                                  f"{expected.checksum}); the file is corrupted", str(path))


def verify_file(path: Path, expected: FileRecord) -> None:
    """Read `path` through and raise CorruptVersionError naming it when size or checksum differ."""
    hasher = xxhash.xxh3_128()
    buffer = memoryview(bytearray(min(CHUNK_BYTES, max(expected.size, 1))))
    with _open_checked(path, expected) as handle:
        while True:
            count = handle.readinto(buffer)
            if not count:
                break
            hasher.update(buffer[:count])
    _check_digest(path, hasher, expected)


def read_shard(path: Path, expected: FileRecord, verify: bool = True) -> dict[str, torch.Tensor]:
    """Map a safetensors file, check it against `expected`, and return tensors that view the mapping.

    The mapping is private (copy-on-write), so tensors may be modified without touching the file, and it stays
    valid after garbage collection unlinks the file.
    """
    with _open_checked(path, expected) as handle:
        if expected.size < 8:
            raise CorruptVersionError(f"{path}: {expected.size} bytes is too short for a safetensors file",
                                      str(path))
        mapped = mmap.mmap(handle.fileno(), expected.size, access=mmap.ACCESS_COPY)
    if verify:
        mapped.madvise(mmap.MADV_SEQUENTIAL)
        hasher = xxhash.xxh3_128()
        with memoryview(mapped) as view:
            for start in range(0, expected.size, CHUNK_BYTES):
                hasher.update(view[start:start + CHUNK_BYTES])
        _check_digest(path, hasher, expected)
    return _parse(path, torch.frombuffer(mapped, dtype=torch.uint8))


def _parse(path: Path, buffer: torch.Tensor) -> dict[str, torch.Tensor]:
    try:
        header_len = int.from_bytes(bytes(buffer[:8].numpy()), "little")
        header = json.loads(bytes(buffer[8:8 + header_len].numpy()))
        base = 8 + header_len
        tensors: dict[str, torch.Tensor] = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            dtype = CODE_DTYPES[entry["dtype"]]
            begin, end = entry["data_offsets"]
            raw = buffer[base + begin:base + end]
            itemsize = torch.empty((), dtype=dtype).element_size()
            if (base + begin) % itemsize:
                raw = raw.clone()
            tensors[name] = raw.view(dtype).view(entry["shape"])
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise CorruptVersionError(f"{path}: malformed safetensors header or data ({err})", str(path)) from err
    return tensors


def checksum_file(path: Path) -> FileRecord:
    """Size and checksum of a file already written (config and tokenizer files)."""
    hasher = xxhash.xxh3_128()
    size = 0
    buffer = memoryview(bytearray(CHUNK_BYTES))
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            hasher.update(buffer[:count])
            size += count
    return FileRecord(size=size, checksum=hasher.hexdigest())

