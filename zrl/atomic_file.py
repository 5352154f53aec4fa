"""Small files replaced atomically: written to a sibling temporary file, then `os.replace`d over the target, so a
reader (or a process restarted after a crash) sees the old content or the new, never a torn write. Imports nothing
from zrl, so every layer may use it."""

from __future__ import annotations

import json
import os
import secrets
import socket
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"


def unique_suffix() -> str:
    """`host-pid-random`, so a temporary name never collides across processes or hosts sharing the disk."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def write_atomic(path: Path, text: str, durable: bool = False) -> None:
    """Replace `path` by a file holding `text`; with `durable`, the file and the directory entry are fsynced.

    The temporary file is `.tmp-{name}-{host}-{pid}-{random}`, so a cleaner can tell whether its writer still runs.
    """
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{unique_suffix()}")
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
