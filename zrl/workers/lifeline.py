"""Ends a worker whose controller is gone, even when the worker's main loop hangs.

Two signs that the controller is gone, each optional:
- the parent pid (local scheduler): `getppid()` changes once the parent dies, whatever the death;
- the controller's lease (any scheduler): a keepalive name the controller holds; absent for `lease_s / 2` (the
  controller's TTL is the other half), the controller is gone. An unreachable name service is not an absence.

A signal such as PR_SET_PDEATHSIG only sets a flag that a hung main thread never reads, so this runs in its own
thread: it asks the worker to exit, and if it has not after `exit_grace_s`, dumps every thread's stack into the
log and ends the process with `os._exit`.
"""

from __future__ import annotations

import faulthandler
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable

from zrl.nameresolve import NameEntryNotFoundError, NameResolveError, NameResolver

logger = logging.getLogger(__name__)

EXIT_CODE = 3
"""Exit status of a worker ended by its lifeline."""


class Lifeline:
    """Watches the controller from a daemon thread; `start()` it after the worker is built."""

    def __init__(self, request_exit: Callable[[], None], *, exit_grace_s: float, parent_pid: int | None = None,
                 resolver: NameResolver | None = None, lease_name: str = "", lease_s: float = 0.0):
        if lease_s > 0 and (resolver is None or not lease_name):
            raise ValueError("a controller lease needs a name resolver and the lease name")
        self._request_exit = request_exit
        self._exit_grace_s = exit_grace_s
        self._parent_pid = parent_pid
        self._resolver = resolver
        self._lease_name = lease_name
        self._lease_s = lease_s
        self._lease_missing_since: float | None = None
        self._check_s = min(1.0, lease_s / 8) if lease_s > 0 else 0.5
        self._thread = threading.Thread(target=self._watch, daemon=True, name="zrl-lifeline")

    @property
    def enabled(self) -> bool:
        return self._parent_pid is not None or self._lease_s > 0

    def start(self) -> None:
        if self.enabled:
            self._thread.start()

    def controller_gone(self) -> str | None:
        """Why the controller counts as gone, or None while it is alive (or its state is unknown)."""
        if self._parent_pid is not None and os.getppid() != self._parent_pid:
            return f"its controller (parent pid {self._parent_pid}) has exited"
        if self._lease_s > 0:
            return self._lease_lapsed()
        return None

    def _lease_lapsed(self) -> str | None:
        assert self._resolver is not None
        try:
            self._resolver.get(self._lease_name)
        except NameEntryNotFoundError:
            # The lease was seen missing when the look-up answered, which may be long after it was asked (a name
            # service that was unreachable blocks the call): absence counts from the answer, never from before it.
            now = time.monotonic()
            self._lease_missing_since = self._lease_missing_since or now
            if now - self._lease_missing_since >= self._lease_s / 2:
                return f"its controller's lease {self._lease_name} has lapsed"
            return None
        except NameResolveError:
            return None
        self._lease_missing_since = None
        return None

    def _watch(self) -> None:
        while True:
            reason = self.controller_gone()
            if reason is not None:
                break
            time.sleep(self._check_s)
        logger.warning("%s; exiting (hard exit in %.0f s if the worker does not stop)", reason, self._exit_grace_s)
        self._request_exit()
        time.sleep(self._exit_grace_s)
        logger.error("still running %.0f s after its controller went; stacks of every thread follow", self._exit_grace_s)
        for handler in logging.getLogger().handlers:
            handler.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        # The worker's own processes (a verifier pool) would outlive a hard exit: a pool's workers hold both ends
        # of their task queue, so they never see it close, and a Slurm step lasts as long as any of them.
        for child in multiprocessing.active_children():
            child.kill()
        os._exit(EXIT_CODE)
