"""Where things live on disk, name checks, and small pointer files replaced atomically.

    {root}/{experiment}/{trial}/{model}/
        v00000012/          one version (config, safetensors shards, tokenizer files, manifest.json)
        latest              text: the newest version number
        tags/{tag}          text: the tagged version number
        .lock               flock held by writers (push rename, tag, gc)
        .tmp-v00000013-...  a version being written; never read
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# TMP_PREFIX, fsync_dir and unique_suffix are re-exported: the parameter DB's modules use them from here.
from zrl.atomic_file import TMP_PREFIX as TMP_PREFIX
from zrl.atomic_file import fsync_dir as fsync_dir
from zrl.atomic_file import unique_suffix as unique_suffix
from zrl.atomic_file import write_atomic
from zrl.paramdb.errors import InvalidNameError

VERSION_DIR = re.compile(r"^v(\d{8})$")
MAX_VERSION = 10**8 - 1
LATEST = "latest"
TRASH_PREFIX = ".trash-"


def check_name(kind: str, name: object) -> str:
    """Return `name` when it is usable as one path component; otherwise raise InvalidNameError naming `kind`."""
    if not isinstance(name, str) or not name:
        raise InvalidNameError(f"{kind} name must be a non-empty string, got {name!r}")
    if "/" in name or "\\" in name or "\0" in name or name.startswith(".") or name.strip() != name:
        raise InvalidNameError(f"{kind} name {name!r} may not contain '/', '\\' or NUL, start with '.', "
                               f"or have surrounding spaces")
    return name


def check_tag(tag: object) -> str:
    tag = check_name("tag", tag)
    if tag == LATEST or tag.isdigit():
        raise InvalidNameError(f"tag {tag!r} is reserved: tags may not be {LATEST!r} or a bare number")
    return tag


def check_version(version: object) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= MAX_VERSION:
        raise ValueError(f"version must be an int in [0, {MAX_VERSION}], got {version!r}")
    return version


def version_dirname(version: int) -> str:
    return f"v{version:08d}"


def numbered_entries(directory: Path, pattern: re.Pattern[str]) -> list[int]:
    """The numbers of the entries of `directory` whose names match `pattern` (its first group), ascending; none
    when the directory does not exist."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(match.group(1)) for match in map(pattern.match, names) if match)


def stored_versions(model_dir: Path) -> list[int]:
    """Version numbers present under `model_dir`, ascending."""
    return numbered_entries(model_dir, VERSION_DIR)


def write_pointer(path: Path, version: int, durable: bool = True) -> None:
    """Point `path` at `version`: write a sibling temporary file, then `os.replace` it over `path`."""
    write_atomic(path, f"{version}\n", durable)


def read_pointer(path: Path) -> int | None:
    """The version a pointer file names, or None when it does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return check_version(int(text.strip()))
    except ValueError as err:
        raise ValueError(f"pointer file {path} holds {text!r}, not a version number") from err


@contextmanager
def writer_lock(model_dir: Path) -> Iterator[None]:
    """Serialize writers of one model (across processes on hosts that share a POSIX-locking filesystem)."""
    fd = os.open(model_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
