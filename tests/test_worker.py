"""The Worker base in-process: lifecycle, control during a long poll, errors with tracebacks, registration."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

import pytest

from zrl.nameresolve import NameEntryNotFoundError, make_name_resolver, names
from zrl.streams.control import ControlClient
from zrl.streams.control_auth import ControlKey
from zrl.workers.base import PollResult, Worker, WorkerContext


@dataclass(frozen=True)
class CountingConfig:
    steps: int = 5
    """Polls before the worker completes."""
    poll_s: float = 0.0
    """How long each poll takes."""
    fail_at: int = -1
    """Raise in this poll (-1: never)."""


class CountingWorker(Worker):
    config_class = CountingConfig

    def _configure(self, config: CountingConfig) -> None:
        self.done_steps = 0

    def _poll(self) -> PollResult:
        if self.done_steps == self.config.fail_at:
            raise ZeroDivisionError(f"poll {self.done_steps} failed on purpose")
        time.sleep(self.config.poll_s)
        self.done_steps += 1
        return PollResult(sample_count=3, batch_count=1, done=self.done_steps >= self.config.steps)

    def _stats(self) -> dict:
        return {"done_steps": getattr(self, "done_steps", 0)}


class Running:
    """A worker run in a thread, on a private memory name service, with a control client connected to it."""

    def __init__(self):
        self.trial = f"t{uuid.uuid4().hex[:8]}"
        self.resolver = make_name_resolver(f"memory://{self.trial}")
        key = ControlKey.generate()
        self.worker = CountingWorker(WorkerContext("exp", self.trial, "counter", 0, keepalive_ttl_s=1.0,
                                                   control_key=key), self.resolver)
        self.result: list[int] = []
        self.thread = threading.Thread(target=lambda: self.result.append(self.worker.run()), daemon=True)
        self.thread.start()
        self.name = names.worker_control("exp", self.trial, "counter/0")
        self.client = ControlClient(self.trial, key=key)
        self.client.connect("counter/0", self.resolver.wait(self.name, timeout=5))

    def ask(self, command: str, payload: dict | None = None, timeout: float = 5.0):
        return self.client.request("counter/0", command, payload, timeout=timeout)["counter/0"]

    def wait_status(self, status: str, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.ask("status")
            if reply.ok and reply.result["status"] == status:
                return reply.result
            time.sleep(0.02)
        raise AssertionError(f"worker did not reach {status}; last reply {reply}")

    def close(self) -> None:
        if self.thread.is_alive():
            self.ask("exit")
            self.thread.join(timeout=10)
        self.client.close()
        self.resolver.close()


@pytest.fixture
def running():
    run = Running()
    yield run
    run.close()


def test_lifecycle_to_completed_and_exit(running):
    assert running.ask("status").result["status"] == "READY"
    assert running.ask("status").result["configured"] is False
    reply = running.ask("configure", {"config": {"steps": 4}})
    assert reply.ok and reply.result["configured"] is True
    assert running.ask("start").result["status"] == "RUNNING"
    result = running.wait_status("COMPLETED")
    assert result["sample_count"] == 12 and result["batch_count"] == 4 and result["stats"] == {"done_steps": 4}
    assert running.ask("exit").ok
    running.thread.join(timeout=5)
    assert running.result == [0]
    with pytest.raises(NameEntryNotFoundError):
        running.resolver.get(running.name)


def test_status_is_published_in_the_name_service(running):
    status_name = names.worker_status("exp", running.trial, "counter/0")

    def published(expected: str) -> str:
        deadline = time.monotonic() + 5
        value = None
        while time.monotonic() < deadline:
            try:
                value = running.resolver.get(status_name)
            except NameEntryNotFoundError:
                value = None
            if value == expected:
                return value
            time.sleep(0.02)
        raise AssertionError(f"{status_name} is {value!r}, expected {expected!r}")

    assert published("READY") == "READY"
    running.ask("configure", {"config": {"steps": 10_000, "poll_s": 0.001}})
    running.ask("start")
    assert published("RUNNING") == "RUNNING"
    running.ask("pause")
    assert published("PAUSED") == "PAUSED"
    running.ask("exit")
    running.thread.join(timeout=5)
    with pytest.raises(NameEntryNotFoundError):
        running.resolver.get(status_name)


def test_pause_resume_and_bad_transitions(running):
    assert not running.ask("start").ok  # before configure
    assert "configure" in running.ask("start").error.message
    assert not running.ask("pause").ok
    running.ask("configure", {"config": {"steps": 10_000, "poll_s": 0.001}})
    running.ask("start")
    assert running.ask("pause").result["status"] == "PAUSED"
    time.sleep(0.1)  # let a poll in flight finish
    polls = running.ask("status").result["polls"]
    time.sleep(0.2)
    assert running.ask("status").result["polls"] == polls
    assert running.ask("resume").result["status"] == "RUNNING"
    time.sleep(0.2)
    assert running.ask("status").result["polls"] > polls
    assert not running.ask("configure", {"config": {}}).ok  # only before start


def test_control_is_served_during_a_long_poll(running):
    running.ask("configure", {"config": {"steps": 2, "poll_s": 3.0}})
    running.ask("start")
    time.sleep(0.2)
    started = time.monotonic()
    reply = running.ask("status", timeout=1.0)
    assert reply.ok and reply.result["status"] == "RUNNING"
    assert reply.result["polls"] == 0
    assert running.ask("pause", timeout=1.0).result["status"] == "PAUSED"
    assert time.monotonic() - started < 1.0


def test_poll_exception_reports_type_message_traceback(running):
    running.ask("configure", {"config": {"fail_at": 2}})
    running.ask("start")
    result = running.wait_status("ERROR")
    error = result["error"]
    assert error["type"] == "ZeroDivisionError" and error["message"] == "poll 2 failed on purpose"
    assert "in _poll" in error["traceback"]
    assert running.ask("exit").ok
    running.thread.join(timeout=5)
    assert running.result == [1]


def test_bad_config_is_an_error_naming_the_key(running):
    reply = running.ask("configure", {"config": {"stepz": 3}})
    assert not reply.ok and reply.error.type == "TypeError"
    assert "workers.counter.config" in reply.error.message and "stepz" in reply.error.message
    assert "steps" in reply.error.message
    # A bad request does not stop the worker from serving.
    assert running.ask("status").ok


def test_a_configure_without_a_config_is_refused_naming_what_it_takes(running):
    reply = running.ask("configure", {"conf": {}})
    assert not reply.ok and "configure takes a payload {'config'" in reply.error.message
    assert running.ask("status").ok
