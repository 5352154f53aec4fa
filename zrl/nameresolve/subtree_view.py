"""A subtree of the name service kept current by a background thread, for readers on a data path.

A stream that resolved its peers inside `post` or `wait` would stall for the name service's whole retry budget
during an outage, and then fail. With a view it goes on with the peers it already knows, and picks up changes
once the service answers again.
"""

from __future__ import annotations

import logging
import threading

from .base import NameResolver
from .errors import NameResolveError

logger = logging.getLogger(__name__)


class SubtreeView:
    """The sorted, distinct values registered under `root`, re-read every `interval_s` by a daemon thread.

    The constructor reads once and raises if the service cannot answer; afterwards `values()` never waits on the
    service, and while the service is unreachable it keeps returning the last values read.
    """

    def __init__(self, resolver: NameResolver, root: str, interval_s: float):
        if not interval_s > 0:
            raise ValueError(f"interval_s of the view of {root!r} must be > 0, got {interval_s!r}")
        self.root = root
        self._resolver = resolver
        self._interval_s = interval_s
        self._values = self._read()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True, name=f"zrl-subtree-view:{root}")
        self._thread.start()

    def values(self) -> list[str]:
        with self._lock:
            return list(self._values)

    def refresh(self) -> None:
        """Re-read soon (for example after a peer missed a deadline); does not wait for the read."""
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=1)  # a read stuck in an outage ends on its own; the thread is a daemon

    def _read(self) -> list[str]:
        return sorted(set(self._resolver.get_subtree(self.root)))

    def _follow(self) -> None:
        unreachable = False
        while not self._stop.is_set():
            self._wake.wait(self._interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                values = self._read()
            except NameResolveError as exc:
                if not unreachable:
                    logger.warning("cannot re-read %s from the name service; going on with the %d known entries: %s",
                                   self.root, len(self.values()), exc)
                unreachable = True
                continue
            if unreachable:
                logger.info("name service answers again; %s has %d entries", self.root, len(values))
            unreachable = False
            with self._lock:
                self._values = values
