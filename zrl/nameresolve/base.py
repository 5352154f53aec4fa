"""The NameResolver interface, with the keepalive refresher, `wait` and `watch` shared by every backend.

A backend implements the storage primitives (`_add`, `_get`, `_keys_under`, `_delete`, `_refresh`);
the public operations here validate arguments, track what this instance registered, and run the
background threads.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
import uuid
from collections.abc import Callable

from .errors import NameEntryNotFoundError, NameResolveError
from .keys import check_key, check_value, in_subtree

logger = logging.getLogger(__name__)

# The refresher runs this many times per shortest TTL, so two refreshes may fail before a name expires.
REFRESHES_PER_TTL = 3


class NameWatch:
    """Handle of a `watch`: `fired` is set once the callback has run; `cancel()` stops watching."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.fired = threading.Event()
        self._cancelled = threading.Event()
        self.thread: threading.Thread | None = None

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class NameResolver(abc.ABC):
    """A key-value name service: '/'-separated string keys, string values, optional keepalive TTLs.

    Keepalive entries (`keepalive_ttl` seconds) are refreshed by a daemon thread of this instance
    every ttl/3; when the process dies they expire within one TTL. A name deleted by anyone stops
    being refreshed. Instances are thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._added: set[str] = set()
        self._keepalive: dict[str, tuple[str, float]] = {}
        self._refresher: threading.Thread | None = None
        self._refresher_stop = threading.Event()
        self._refresher_wake = threading.Event()
        self._watches: list[NameWatch] = []
        self._closed = False

    # ---- storage primitives implemented by each backend ----

    @abc.abstractmethod
    def _add(self, name: str, value: str, ttl: float | None, replace: bool) -> None:
        """Store `name`; raise NameEntryExistsError if it is live and `replace` is false."""

    @abc.abstractmethod
    def _get(self, name: str) -> str:
        """Return the live value of `name` or raise NameEntryNotFoundError."""

    @abc.abstractmethod
    def _items_under(self, root: str) -> list[tuple[str, str]]:
        """Return (key, value) of every live entry in the subtree of `root`, sorted by key."""

    @abc.abstractmethod
    def _delete(self, name: str) -> None:
        """Remove `name`; raise NameEntryNotFoundError if it is not live."""

    @abc.abstractmethod
    def _refresh(self, name: str, value: str, ttl: float) -> bool:
        """Extend the keepalive of `name`; return False once the entry is gone for good."""

    def _get_within(self, name: str, timeout: float) -> str:
        """`_get`, giving up on an unreachable service after about `timeout` seconds."""
        return self._get(name)

    def _exists(self, name: str) -> bool:
        try:
            self._get(name)
        except NameEntryNotFoundError:
            return False
        return True

    @abc.abstractmethod
    def _release(self) -> None:
        """Free backend resources (connections); called once by `close`."""

    # ---- public API ----

    def add(self, name: str, value: str, keepalive_ttl: float | None = None, replace: bool = False) -> None:
        """Register `name` -> `value`; raise NameEntryExistsError if present and not `replace`.

        With `keepalive_ttl` (seconds) the entry lives only while this instance keeps refreshing it.
        """
        check_key(name)
        check_value(value, name)
        if keepalive_ttl is not None and not keepalive_ttl > 0:
            raise ValueError(f"keepalive_ttl for name {name!r} must be > 0 seconds, got {keepalive_ttl!r}")
        self._check_open()
        self._add(name, value, keepalive_ttl, replace)
        with self._lock:
            self._added.add(name)
            if keepalive_ttl is None:
                self._keepalive.pop(name, None)
            else:
                self._keepalive[name] = (value, float(keepalive_ttl))
        if keepalive_ttl is not None:
            self._ensure_refresher()

    def add_subentry(self, root: str, value: str, keepalive_ttl: float | None = None) -> str:
        """Register `value` under a new unique key `root/<short uuid>` and return that key."""
        check_key(root, "subtree root")
        key = f"{root}/{uuid.uuid4().hex[:12]}"
        self.add(key, value, keepalive_ttl=keepalive_ttl)
        return key

    def get(self, name: str) -> str:
        """Return the value of `name`; raise NameEntryNotFoundError if it is not registered."""
        check_key(name)
        return self._get(name)

    def get_subtree(self, root: str) -> list[str]:
        """Values of `root` and every key below it, ordered by key."""
        check_key(root, "subtree root")
        return [value for _, value in self._items_under(root)]

    def find_subtree(self, root: str) -> list[str]:
        """Keys of `root` and every key below it, sorted."""
        check_key(root, "subtree root")
        return [key for key, _ in self._items_under(root)]

    def wait(self, name: str, timeout: float, poll: float = 0.05) -> str:
        """Return the value of `name` once it exists; raise TimeoutError after `timeout` seconds."""
        check_key(name)
        deadline = time.monotonic() + timeout
        last_error: NameResolveError | None = None
        while True:
            try:
                return self._get_within(name, max(0.0, deadline - time.monotonic()))
            except NameEntryNotFoundError:
                last_error = None
            except NameResolveError as exc:
                last_error = exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reason = f"; last error: {last_error}" if last_error is not None else ""
                raise TimeoutError(f"name {name!r} did not appear within {timeout:.3g} s{reason}") from last_error
            time.sleep(min(poll, remaining))

    def delete(self, name: str) -> None:
        """Remove `name`; raise NameEntryNotFoundError if it is not registered."""
        check_key(name)
        self._forget(lambda key: key == name)
        self._delete(name)

    def clear_subtree(self, root: str) -> None:
        """Remove `root` and every key below it (a no-op when there are none)."""
        check_key(root, "subtree root")
        self._forget(lambda key: in_subtree(key, root))
        for key, _ in self._items_under(root):
            try:
                self._delete(key)
            except NameEntryNotFoundError:
                pass

    def watch(self, names: list[str], callback: Callable[[], None], poll: float = 0.1) -> NameWatch:
        """Call `callback()` once, from a daemon thread, when none of `names` exists any more.

        All names must be absent in the same poll ("all gone"); watch one name per call to react to
        each separately. An unreachable service counts as "unknown", never as "gone".
        """
        if isinstance(names, str):
            names = [names]
        if not names:
            raise ValueError("watch needs at least one name")
        for name in names:
            check_key(name)
        self._check_open()
        handle = NameWatch(names)
        handle.thread = threading.Thread(
            target=self._watch_loop, args=(handle, callback, poll), daemon=True,
            name=f"zrl-nameresolve-watch:{names[0]}",
        )
        with self._lock:
            self._watches = [w for w in self._watches if not (w.fired.is_set() or w.cancelled)]
            self._watches.append(handle)
        handle.thread.start()
        return handle

    def reset(self) -> None:
        """Delete every name this instance added and stop refreshing; the instance stays usable.

        If the service is unreachable, the names not yet deleted are logged and the error is raised;
        keepalive ones among them still expire, since their refresher has stopped.
        """
        self._stop_refresher()
        with self._lock:
            added = sorted(self._added)
            self._added.clear()
            self._keepalive.clear()
        for i, name in enumerate(added):
            try:
                self._delete(name)
            except NameEntryNotFoundError:
                pass
            except NameResolveError:
                logger.warning("reset could not delete names %s", added[i:])
                raise

    def close(self) -> None:
        """Stop refresher and watch threads and release connections; entries are not deleted.

        Keepalive entries then expire within their TTL; call `reset()` first to remove names at once.
        """
        if self._closed:
            return
        self._closed = True
        self._stop_refresher()
        with self._lock:
            watches, self._watches = self._watches, []
        for handle in watches:
            handle.cancel()
        for handle in watches:
            if handle.thread is not None and handle.thread is not threading.current_thread():
                handle.thread.join(timeout=5)
        self._release()

    def __enter__(self) -> NameResolver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- internals ----

    def _check_open(self) -> None:
        if self._closed:
            raise NameResolveError(f"{type(self).__name__} is closed")

    def _forget(self, match: Callable[[str], bool]) -> None:
        with self._lock:
            self._added = {key for key in self._added if not match(key)}
            for key in [key for key in self._keepalive if match(key)]:
                del self._keepalive[key]

    def _ensure_refresher(self) -> None:
        with self._lock:
            self._refresher_wake.set()
            if self._refresher is not None and self._refresher.is_alive():
                return
            # A fresh event per thread: an old refresher that outlived its join never restarts.
            self._refresher_stop = threading.Event()
            self._refresher = threading.Thread(target=self._refresh_loop, args=(self._refresher_stop,),
                                               daemon=True, name="zrl-nameresolve-keepalive")
            self._refresher.start()

    def _stop_refresher(self) -> None:
        with self._lock:
            thread, self._refresher = self._refresher, None
            self._refresher_stop.set()
            self._refresher_wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def _refresh_loop(self, stop: threading.Event) -> None:
        wake = self._refresher_wake
        while not stop.is_set():
            wake.clear()
            with self._lock:
                entries = dict(self._keepalive)
            if not entries:
                wake.wait()
                continue
            period = min(ttl for _, ttl in entries.values()) / REFRESHES_PER_TTL
            started = time.monotonic()
            for name, (value, ttl) in entries.items():
                if stop.is_set():
                    return
                try:
                    alive = self._refresh(name, value, ttl)
                except Exception:  # a refresher that dies would silently expire every name
                    logger.warning("keepalive refresh of name %r failed; will retry", name, exc_info=True)
                    continue
                if not alive:
                    logger.info("name %r was removed elsewhere; no longer refreshing it", name)
                    with self._lock:
                        if self._keepalive.get(name) == (value, ttl):
                            del self._keepalive[name]
            wake.wait(max(0.0, period - (time.monotonic() - started)))

    def _watch_loop(self, handle: NameWatch, callback: Callable[[], None], poll: float) -> None:
        warned = False
        while not handle.cancelled and not self._closed:
            try:
                gone = not any(self._exists(name) for name in handle.names)
            except NameResolveError as exc:
                if not warned:
                    logger.warning("watch on %s cannot reach the name service: %s", handle.names, exc)
                    warned = True
                gone = False
            if gone:
                try:
                    callback()
                except Exception:
                    logger.exception("watch callback for names %s raised", handle.names)
                finally:
                    handle.fired.set()
                return
            handle._cancelled.wait(poll)
