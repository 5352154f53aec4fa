"""In-process name service: `memory://NAME` resolvers in one process share the store called NAME."""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass

from .base import NameResolver
from .errors import NameEntryExistsError, NameEntryNotFoundError
from .keys import in_subtree


@dataclass
class _Entry:
    value: str
    ttl: float | None
    refreshed: float

    def live(self, now: float) -> bool:
        return self.ttl is None or now - self.refreshed <= self.ttl


class MemoryStore:
    """A thread-safe dict of entries kept in key order, with TTLs checked on read."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[str, _Entry] = {}
        self.sorted_keys: list[str] = []

    def live_entry(self, name: str, now: float) -> _Entry | None:
        """The live entry of `name`; an expired one is dropped. Call with `lock` held."""
        entry = self.entries.get(name)
        if entry is not None and not entry.live(now):
            self.remove(name)
            return None
        return entry

    def put(self, name: str, entry: _Entry) -> None:
        if name not in self.entries:
            bisect.insort(self.sorted_keys, name)
        self.entries[name] = entry

    def remove(self, name: str) -> None:
        del self.entries[name]
        del self.sorted_keys[bisect.bisect_left(self.sorted_keys, name)]


_stores_lock = threading.Lock()
_stores: dict[str, MemoryStore] = {}


def shared_store(name: str) -> MemoryStore:
    """The process-wide store called `name`, created on first use."""
    with _stores_lock:
        store = _stores.get(name)
        if store is None:
            store = _stores[name] = MemoryStore()
        return store


class MemoryNameResolver(NameResolver):
    """Name service inside one process, for tests and single-process runs."""

    def __init__(self, store: MemoryStore | None = None):
        super().__init__()
        self.store = store if store is not None else MemoryStore()

    def _add(self, name: str, value: str, ttl: float | None, replace: bool) -> None:
        now = time.monotonic()
        with self.store.lock:
            if not replace and self.store.live_entry(name, now) is not None:
                raise NameEntryExistsError(f"name {name!r} is already registered")
            self.store.put(name, _Entry(value, ttl, now))

    def _get(self, name: str) -> str:
        with self.store.lock:
            entry = self.store.live_entry(name, time.monotonic())
        if entry is None:
            raise NameEntryNotFoundError(f"name {name!r} is not registered")
        return entry.value

    def _items_under(self, root: str) -> list[tuple[str, str]]:
        now = time.monotonic()
        items = []
        with self.store.lock:
            keys = self.store.sorted_keys
            start = bisect.bisect_left(keys, root)
            candidates = []
            for key in keys[start:]:
                if not key.startswith(root):
                    break
                if in_subtree(key, root):
                    candidates.append(key)
            for key in candidates:
                entry = self.store.live_entry(key, now)
                if entry is not None:
                    items.append((key, entry.value))
        return items

    def _delete(self, name: str) -> None:
        with self.store.lock:
            if self.store.live_entry(name, time.monotonic()) is None:
                raise NameEntryNotFoundError(f"name {name!r} is not registered")
            self.store.remove(name)

    def _refresh(self, name: str, value: str, ttl: float) -> bool:
        now = time.monotonic()
        with self.store.lock:
            entry = self.store.live_entry(name, now)
            if entry is None or entry.value != value:
                return False
            entry.refreshed = now
        return True

    def _release(self) -> None:
        """Nothing to release: no connection is held."""
