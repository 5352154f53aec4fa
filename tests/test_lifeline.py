"""The lifeline's controller lease, against a real redis-server that stops answering for a while."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from conftest import redis_server  # noqa: F401
from test_controller_e2e import alive

from zrl.nameresolve import make_name_resolver
from zrl.workers.lifeline import EXIT_CODE, Lifeline

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


HUNG_WORKER = """
import multiprocessing, time
from zrl.nameresolve import make_name_resolver
from zrl.workers.lifeline import EXIT_CODE, Lifeline

if __name__ == "__main__":
    child = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(600,))
    child.start()
    print(child.pid, flush=True)
    resolver = make_name_resolver("memory://lifeline-children")
    Lifeline(lambda: None, exit_grace_s=0.5, resolver=resolver, lease_name="exp/trial/controller",
             lease_s=1.0).start()
    time.sleep(600)  # a main thread that never comes back to exit
"""


def test_a_hard_exit_takes_the_workers_own_processes_with_it(tmp_path):
    script = tmp_path / "hung_worker.py"
    script.write_text(HUNG_WORKER)
    worker = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child_pid = int(worker.stdout.readline())
    assert worker.wait(timeout=60) == EXIT_CODE
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and alive(child_pid):
        time.sleep(0.1)
    assert not alive(child_pid), f"the worker's child {child_pid} outlived the worker's hard exit"

