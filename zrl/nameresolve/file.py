"""Name service on a shared directory (one machine, or several over NFS).

Each key is a directory `{root}/{key}/` holding an `.entry` file with a JSON record
`{"value": ..., "ttl": ...}`, written to a temporary file and renamed into place. A keepalive
entry's refresher touches the file's mtime every ttl/3; readers treat an entry whose mtime is older
than its ttl as gone, so the names of a process that died expire. Expiry compares the file's mtime
with this host's clock: hosts sharing a directory need clocks in sync to well within one TTL.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path

from .base import NameResolver
from .errors import NameEntryExistsError, NameEntryNotFoundError, NameResolveError

logger = logging.getLogger(__name__)

ENTRY_FILE = ".entry"
# Another process may prune an empty key directory between our mkdir and our write; retry that race.
_CREATE_ATTEMPTS = 5


class FileNameResolver(NameResolver):
    """Name service on a directory shared by every process of a run."""

    def __init__(self, root: str | os.PathLike[str]):
        super().__init__()
        path = Path(root)
        if not path.is_absolute():
            raise ValueError(f"file name service root must be an absolute path, got {str(root)!r}")
        path.mkdir(mode=0o700, parents=True, exist_ok=True)  # names are addresses; no one else need read them
        self.root = path

    def __repr__(self) -> str:
        return f"FileNameResolver({str(self.root)!r})"

    def _entry_path(self, name: str) -> Path:
        return self.root / name / ENTRY_FILE

    def _read(self, path: Path) -> tuple[str, float | None, float] | None:
        """(value, ttl, mtime) of the entry file at `path`, or None when it does not exist."""
        try:
            # Opening before fstat makes NFS revalidate the attributes (close-to-open consistency),
            # so the mtime is fresh rather than from the client's attribute cache.
            with open(path, "rb") as f:
                mtime = os.fstat(f.fileno()).st_mtime
                raw = f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            record = json.loads(raw)
            value, ttl = record["value"], record["ttl"]
            if not isinstance(value, str) or not (ttl is None or isinstance(ttl, (int, float))):
                raise TypeError("value must be a str and ttl a number or null")
        except (ValueError, KeyError, TypeError) as exc:
            raise NameResolveError(f"name-service entry file {path} is corrupt: {exc}") from exc
        return value, ttl, mtime

    def _read_live(self, path: Path) -> str | None:
        entry = self._read(path)
        if entry is None:
            return None
        value, ttl, mtime = entry
        if ttl is not None and time.time() - mtime > ttl:
            return None
        return value

    def _add(self, name: str, value: str, ttl: float | None, replace: bool) -> None:
        data = json.dumps({"value": value, "ttl": ttl}).encode()
        key_dir = self.root / name
        for attempt in range(_CREATE_ATTEMPTS):
            tmp = key_dir / f"{ENTRY_FILE}.tmp.{uuid.uuid4().hex}"
            try:
                key_dir.mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(data)
                self._publish(tmp, key_dir / ENTRY_FILE, name, replace)
                return
            except FileNotFoundError:
                if attempt == _CREATE_ATTEMPTS - 1:
                    raise
            finally:
                tmp.unlink(missing_ok=True)

    def _publish(self, tmp: Path, entry: Path, name: str, replace: bool) -> None:
        if replace:
            os.replace(tmp, entry)
            return
        try:
            os.link(tmp, entry)  # atomic create-if-absent, also on NFS
        except FileExistsError:
            if self._read_live(entry) is not None:
                raise NameEntryExistsError(f"name {name!r} is already registered (in {entry})") from None
            os.replace(tmp, entry)  # the old entry had expired

    def _get(self, name: str) -> str:
        value = self._read_live(self._entry_path(name))
        if value is None:
            raise NameEntryNotFoundError(f"name {name!r} is not registered")
        return value

    def _entry_files_under(self, root: str) -> list[tuple[str, Path]]:
        base = self.root / root
        found = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            if ENTRY_FILE in filenames:
                path = Path(dirpath)
                found.append(("/".join(path.relative_to(self.root).parts), path / ENTRY_FILE))
        found.sort()
        return found

    def _items_under(self, root: str) -> list[tuple[str, str]]:
        items = []
        for key, path in self._entry_files_under(root):
            try:
                value = self._read_live(path)
            except NameResolveError as exc:
                logger.warning("skipping name %r: %s", key, exc)
                continue
            if value is not None:
                items.append((key, value))
        return items

    def _delete(self, name: str) -> None:
        path = self._entry_path(name)
        try:
            live = self._read_live(path) is not None
        except NameResolveError:
            live = True  # a corrupt entry may still be deleted
        try:
            path.unlink()
        except FileNotFoundError:
            live = False
        else:
            self._prune(path.parent)
        if not live:
            raise NameEntryNotFoundError(f"name {name!r} is not registered")

    def clear_subtree(self, root: str) -> None:
        """Remove `root` and every key below it, expired entries included."""
        super().clear_subtree(root)
        for _, path in self._entry_files_under(root):
            path.unlink(missing_ok=True)
            self._prune(path.parent)

    def _prune(self, directory: Path) -> None:
        """Remove now-empty key directories from `directory` up to (not including) the root."""
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def _refresh(self, name: str, value: str, ttl: float) -> bool:
        path = self._entry_path(name)
        entry = self._read(path)
        if entry is None or entry[0] != value:
            return False
        try:
            os.utime(path)
        except FileNotFoundError:
            return False
        return True

    def _release(self) -> None:
        """Nothing to release: no connection is held."""
