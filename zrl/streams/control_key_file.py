"""How a trial's control key reaches its workers: a file readable by its owner only, or an environment variable.

Never argv (any local user reads /proc/*/cmdline), never the name service, never a log. The controller writes
`{run_dir}/control.key` (hex, mode 0600) and tells each worker where it is through `CONTROL_KEY_FILE_ENV`; a launcher
without a shared filesystem may instead put the hex key itself into `CONTROL_KEY_ENV`.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from zrl.streams.control_auth import ControlKey

CONTROL_KEY_FILE = "control.key"
"""Name of the key file in the run directory."""
CONTROL_KEY_FILE_ENV = "ZRL_CONTROL_KEY_FILE"
"""Environment variable with the path of the key file (takes precedence over CONTROL_KEY_ENV)."""
CONTROL_KEY_ENV = "ZRL_CONTROL_KEY"
"""Environment variable with the key itself, as hex."""


class ControlKeyError(ValueError):
    """The control key is missing, unreadable, or readable by others. The message never holds the key."""


def control_key_path(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / CONTROL_KEY_FILE


def write_control_key(path: Path, key: ControlKey) -> None:
    """Write `key` to `path` atomically, readable and writable by its owner only (mode 0600 from its creation)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(key.hex() + "\n")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def read_control_key(path: Path) -> ControlKey:
    """The key in `path`; refused when the file is a symlink, not this user's, or open to group or others."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ControlKeyError(f"cannot read the control key file {path}: {exc.strerror}") from None
    with os.fdopen(fd) as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ControlKeyError(f"the control key file {path} is not a regular file")
        if info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise ControlKeyError(f"the control key file {path} must belong to uid {os.geteuid()} with mode 0600, "
                                  f"has uid {info.st_uid} and mode {stat.S_IMODE(info.st_mode):04o}")
        text = handle.read()
    try:
        return ControlKey.from_hex(text)
    except ValueError as exc:
        raise ControlKeyError(f"the control key file {path}: {exc}") from None


def load_control_key(environ: Mapping[str, str]) -> ControlKey:
    """The key a launcher handed to this process: the file named by CONTROL_KEY_FILE_ENV, else CONTROL_KEY_ENV."""
    path = environ.get(CONTROL_KEY_FILE_ENV)
    if path:
        return read_control_key(Path(path))
    text = environ.get(CONTROL_KEY_ENV)
    if text:
        try:
            return ControlKey.from_hex(text)
        except ValueError as exc:
            raise ControlKeyError(f"${CONTROL_KEY_ENV}: {exc}") from None
    raise ControlKeyError(f"no control key: set ${CONTROL_KEY_FILE_ENV} to the trial's key file (the controller "
                          f"writes {{run_dir}}/{CONTROL_KEY_FILE}) or ${CONTROL_KEY_ENV} to the key as hex")
