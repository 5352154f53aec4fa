"""Small files replaced atomically: written to a sibling temporary file, then `os.replace`d over the target, so a
reader (or a process restarted after a crash) sees the old content or the new, never a torn write. Imports nothing
from zrl, so every layer may use it."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any


def write_atomic(path: Path, text: str, durable: bool = False) -> None:
    """Replace `path` by a file holding `text`; with `durable`, the file and the directory entry are fsynced."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_json_atomic(path: Path, value: Any, durable: bool = False) -> None:
    write_atomic(path, json.dumps(value, indent=1) + "\n", durable)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
