"""Name service on Redis: SET PX NX for keepalive entries, SCAN (never KEYS) for subtrees.

Every operation retries connection errors with bounded backoff for `retry_timeout` seconds, then
raises NameServiceUnavailableError. After an outage the refresher re-registers this process's
keepalive entries that the server lost (a restart without persistence loses them all). A restart
can also pass unnoticed (redis-py reconnects without an error), so the refresher tells "lost in a
restart" from "deleted elsewhere" by the server's `run_id`, which every restart changes. A name that
expired because this process could not refresh it in time (it was suspended or starved) is taken back too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .base import NameResolver
from .errors import (
    NameEntryExistsError,
    NameEntryNotFoundError,
    NameResolveError,
    NameServiceAuthError,
    NameServiceUnavailableError,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

_OUTAGE_ERRORS = (redis.ConnectionError, redis.TimeoutError)
_SCAN_COUNT = 1000
_MGET_CHUNK = 1000

# Extend our own entry; re-create it only when it is missing and ARGV[3] == "1" (after an outage).
# An entry someone else replaced with another value is left alone (returns 0).
_REFRESH_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if current == false and ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""


def redact_url(url: str) -> str:
    """`url` with any password replaced by '***', safe to log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisNameResolver(NameResolver):
    """Name service on a Redis server, recommended on clusters."""

    def __init__(self, url: str, retry_timeout: float = 30.0, socket_timeout: float = 5.0):
        super().__init__()
        self.url = redact_url(url)
        self.retry_timeout = retry_timeout
        try:
            self._client = redis.Redis.from_url(
                url, decode_responses=True, socket_timeout=socket_timeout,
                socket_connect_timeout=min(socket_timeout, 2.0), retry=Retry(NoBackoff(), 0),
            )
        except ValueError as exc:
            raise ValueError(f"bad redis name service URL {self.url}: {exc}") from None
        self._refresh_script = self._client.register_script(_REFRESH_SCRIPT)
        self._outage_lock = threading.Lock()
        self._reregister: set[str] = set()
        self._run_id_of: dict[str, str | None] = {}
        """The server run_id seen when each keepalive name was last written; another one means a restart."""
        self._kept_until: dict[str, float] = {}
        """When each keepalive name expires (monotonic) unless refreshed; missing later means expired, not deleted."""

    def __repr__(self) -> str:
        return f"RedisNameResolver({self.url})"

    def _note_outage(self) -> None:
        with self._lock:
            names = set(self._keepalive)
        with self._outage_lock:
            self._reregister |= names

    def _call(self, what: str, fn: Callable[[], T], retry_timeout: float | None = None) -> T:
        budget = self.retry_timeout if retry_timeout is None else retry_timeout
        deadline = time.monotonic() + budget
        delay = 0.05
        attempts = 0
        while True:
            attempts += 1
            try:
                return fn()
            except redis.AuthenticationError as exc:  # a ConnectionError to redis-py, but no retry will help
                raise NameServiceAuthError(
                    f"redis name service {self.url} refused the credentials during {what}: {str(exc).rstrip('.')}; give the right "
                    "password (or ACL user and password) in the URL, or none if the server requires none") from exc
            except _OUTAGE_ERRORS as exc:
                self._note_outage()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NameServiceUnavailableError(
                        f"redis name service {self.url} unreachable during {what} "
                        f"({attempts} attempts over {budget:.3g} s): {exc}") from exc
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 1.0)
            except redis.RedisError as exc:
                raise NameResolveError(f"redis name service {self.url} failed {what}: {exc}") from exc

    def _server_run_id(self) -> str | None:
        """The server's run_id (new at every start), or None where INFO is not allowed (ACL)."""
        try:
            return str(self._call("INFO server", lambda: self._client.info("server"))["run_id"])
        except (NameServiceUnavailableError, NameResolveError, KeyError):
            return None

    def _add(self, name: str, value: str, ttl: float | None, replace: bool) -> None:
        px = None if ttl is None else max(1, int(ttl * 1000))
        if ttl is not None:
            # Read before the SET: a restart in between then looks like one, and the refresher re-registers.
            self._run_id_of[name] = self._server_run_id()
        tries = 0

        def set_entry() -> bool | None:
            nonlocal tries
            tries += 1
            return self._client.set(name, value, px=px, nx=not replace)

        sent_at = time.monotonic()
        if self._call(f"SET {name!r}", set_entry):
            if ttl is not None:
                self._kept_until[name] = sent_at + ttl
            return
        # After a broken connection the first SET NX may have landed before the retry found the name.
        if tries > 1 and self._call(f"GET {name!r}", lambda: self._client.get(name)) == value:
            return
        raise NameEntryExistsError(f"name {name!r} is already registered")

    def _get(self, name: str) -> str:
        return self._get_within(name, self.retry_timeout)

    def _get_within(self, name: str, timeout: float) -> str:
        value = self._call(f"GET {name!r}", lambda: self._client.get(name), min(timeout, self.retry_timeout))
        if value is None:
            raise NameEntryNotFoundError(f"name {name!r} is not registered")
        return value

    def _scan_keys(self, root: str) -> list[str]:
        keys = set(self._client.scan_iter(match=_glob_escape(root) + "/*", count=_SCAN_COUNT))
        keys.add(root)
        return sorted(keys)

    def _items_under(self, root: str) -> list[tuple[str, str]]:
        def fetch() -> list[tuple[str, str]]:
            keys = self._scan_keys(root)
            items = []
            for start in range(0, len(keys), _MGET_CHUNK):
                chunk = keys[start:start + _MGET_CHUNK]
                items += [(k, v) for k, v in zip(chunk, self._client.mget(chunk), strict=True) if v is not None]
            return items
        return self._call(f"SCAN subtree {root!r}", fetch)

    def _delete(self, name: str) -> None:
        if not self._call(f"DEL {name!r}", lambda: self._client.delete(name)):
            raise NameEntryNotFoundError(f"name {name!r} is not registered")

    def _refresh(self, name: str, value: str, ttl: float) -> bool:
        started = time.monotonic()
        with self._outage_lock:
            reregister = name in self._reregister
        try:
            result = self._refresh_script(keys=[name], args=[value, max(1, int(ttl * 1000)),
                                                             "1" if reregister else "0"])
        except _OUTAGE_ERRORS as exc:
            self._note_outage()
            logger.warning("cannot refresh name %r: redis name service %s unreachable: %s", name, self.url, exc)
            return True
        with self._outage_lock:
            self._reregister.discard(name)
        if result == 0:
            # Judged after the call: this process may have been stopped while the script was on its way.
            result = self._reclaim(name, value, ttl,
                                   expired=time.monotonic() > self._kept_until.get(name, float("inf")))
        elif result == 2:  # re-created after an outage: on the server that now runs
            self._run_id_of[name] = self._server_run_id()
        if result != 0:
            self._kept_until[name] = started + ttl
        if result == 2:
            logger.info("re-registered name %r after a redis outage, restart or a late refresh", name)
        return result != 0

    def _reclaim(self, name: str, value: str, ttl: float, expired: bool) -> int:
        """The refresh result for a name found missing or replaced: re-created (2) if it was lost to a server
        restart since we wrote it, or to its own expiry (`expired`), rather than deleted elsewhere."""
        run_id = self._server_run_id()
        restarted = run_id is not None and run_id != self._run_id_of.get(name)
        if not (restarted or expired):
            return 0
        self._run_id_of[name] = run_id
        try:
            return int(self._refresh_script(keys=[name], args=[value, max(1, int(ttl * 1000)), "1"]))
        except _OUTAGE_ERRORS:
            self._note_outage()
            return 1

    def _release(self) -> None:
        self._client.close()
