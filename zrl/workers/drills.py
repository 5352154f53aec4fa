"""Fault drills for tests: a worker hangs or fails on purpose, to exercise the controller's failure handling.

Test-only, and off unless `$ZRL_DRILL` names the worker: `WORKER:ACTION@N[,WORKER:ACTION@N...]`, e.g.
`trainer/0:hang@2` or `producer/0:fail@2`. Once the worker's process has done N batches (`PollResult.batch_count`),
its next poll runs the drill instead of the work: `hang` deadlocks it for good in native code (as a deadlocked
library would: no GIL, no Python signal handler of the main thread runs again), `fail` raises a RuntimeError. The
Worker base runs it (`Worker._poll_once`); worker types know nothing of drills. Worker processes inherit the
variable from the controller's environment.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast

DRILL_ENV = "ZRL_DRILL"
ACTIONS = ("hang", "fail")


@dataclass(frozen=True)
class Drill:
    action: Literal["hang", "fail"]
    after_batches: int

    def run_if_due(self, batches: int, logger: logging.Logger) -> None:
        """Run the drill when `batches` batches are done; otherwise return at once."""
        if batches < self.after_batches:
            return
        if self.action == "fail":
            raise RuntimeError(f"drill: fail after {self.after_batches} batches (${DRILL_ENV})")
        logger.warning("drill: hang after %d batches (%s): deadlocking inside this poll", self.after_batches,
                       DRILL_ENV)
        deadlock_in_native_code()


def drill_for(worker_id: str, environ: Mapping[str, str]) -> Drill | None:
    """The drill `$ZRL_DRILL` sets for `worker_id`, or None; ValueError names an entry that is malformed."""
    for entry in filter(None, (part.strip() for part in environ.get(DRILL_ENV, "").split(","))):
        target, _, rest = entry.partition(":")
        action, _, count = rest.partition("@")
        if action not in ACTIONS or not count.isdigit():
            raise ValueError(f"${DRILL_ENV}: {entry!r} is not WORKER:ACTION@N with ACTION one of "
                             f"{', '.join(ACTIONS)} and N a number of batches")
        if target == worker_id:
            return Drill(cast(Literal["hang", "fail"], action), int(count))
    return None


def deadlock_in_native_code() -> None:
    """Block this thread for good inside C code, as a deadlocked library would: it holds no GIL, and it never
    returns to the interpreter, so Python signal handlers of this (main) thread never run."""
    libc = ctypes.CDLL(None, use_errno=True)
    mutex = ctypes.create_string_buffer(64)  # all zeros: a default (non-recursive) pthread mutex
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)
