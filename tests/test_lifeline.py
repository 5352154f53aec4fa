"""The lifeline's controller lease, against a real redis-server that stops answering for a while."""

from __future__ import annotations

import os
import signal
import threading
import time

from conftest import redis_server  # noqa: F401

from zrl.nameresolve import make_name_resolver
from zrl.workers.lifeline import Lifeline

LEASE = "zrl/exp/trial/controller/lease"


def test_a_lease_counts_as_missing_from_when_the_name_service_answers_not_from_before_a_blocked_lookup(
        redis_server):  # noqa: F811
    """Redis stops answering for 1.5 s (restarting, or cut off) and comes back without the lease: the look-up
    blocked all that time, so the lease has been seen missing for no time at all, not for 1.5 s, and a lease of
    2 s (absent for 1 s counts as lapsed) has not lapsed yet."""
    resolver = make_name_resolver(redis_server.url)
    lifeline = Lifeline(lambda: None, exit_grace_s=1.0, resolver=resolver, lease_name=LEASE, lease_s=2.0)
    try:
        resolver.add(LEASE, "controller")
        assert lifeline.controller_gone() is None
        resolver.delete(LEASE)  # the restarted Redis lost it; the controller adds it again on its next refresh
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        resume = threading.Timer(1.5, os.kill, (redis_server.process.pid, signal.SIGCONT))
        resume.start()
        started = time.monotonic()
        assert lifeline.controller_gone() is None
        assert time.monotonic() - started >= 1.4  # the look-up did block
        assert lifeline.controller_gone() is None  # absent for milliseconds, not 1.5 s
        time.sleep(1.1)
        assert "lease" in (lifeline.controller_gone() or "")  # absent for over half the lease: lapsed
        resolver.add(LEASE, "controller")
        assert lifeline.controller_gone() is None and lifeline.controller_gone() is None
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
        resolver.close()
