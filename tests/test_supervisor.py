"""The controller's decisions about failed workers (`zrl.controller.supervisor.decide`) over the whole table, and
the observations that become failures (`zrl.controller.observe`); no processes, no sockets."""

from __future__ import annotations

import pytest

from zrl.config import ControllerTimeouts, WorkerGroupConfig
from zrl.controller.observe import process_failure, reply_failure, silence_failure
from zrl.controller.schedulers import JobState, WorkerJobStatus
from zrl.controller.supervisor import (
    Abort,
    Failure,
    FailureKind,
    GiveUp,
    GroupView,
    Ignore,
    Rejoin,
    Relaunch,
    WorkerPhase,
    WorkerState,
    decide,
)
from zrl.streams.control import ControlReply

NOW = 1000.0
FAILURES = [kind for kind in FailureKind if kind is not FailureKind.REQUEUED]
HUNG = {FailureKind.NO_ANSWER, FailureKind.NAME_EXPIRED, FailureKind.STALLED}
NOT_STARTING = [WorkerPhase.RUNNING, WorkerPhase.LAUNCHED]


def group(restart: str = "never", max_restarts: int = 3, backoff: float = 2.0, max_failed: int = 0,
          given_up: int = 0) -> GroupView:
    return GroupView(WorkerGroupConfig(type="echo_server", count=3, restart=restart, max_restarts=max_restarts,
                                       restart_backoff_s=backoff, max_failed=max_failed), given_up)


def worker(phase: WorkerPhase, restarts: int = 0) -> WorkerState:
    return WorkerState("g", 0, phase=phase, restarts=restarts)


@pytest.mark.parametrize("kind", FAILURES)
def test_any_failure_while_the_run_starts_stops_it(kind: FailureKind):
    lenient = group(restart="on_failure", max_failed=2)
    decision = decide(worker(WorkerPhase.STARTING), Failure(kind, "x"), lenient, NOW)
    assert decision == Abort(WorkerPhase.LOST if kind in HUNG else WorkerPhase.FAILED)


@pytest.mark.parametrize("phase", NOT_STARTING)
@pytest.mark.parametrize("kind", FAILURES)
def test_a_restartable_worker_is_relaunched_after_a_doubling_backoff(kind: FailureKind, phase: WorkerPhase):
    policy = group(restart="on_failure", max_restarts=3, backoff=2.0)
    assert decide(worker(phase, restarts=0), Failure(kind, "x"), policy, NOW) == Relaunch(1, NOW + 2.0, 2.0)
    assert decide(worker(phase, restarts=2), Failure(kind, "x"), policy, NOW) == Relaunch(3, NOW + 8.0, 8.0)


@pytest.mark.parametrize("phase", NOT_STARTING)
@pytest.mark.parametrize("kind", FAILURES)
def test_beyond_its_restarts_a_worker_is_given_up_while_its_group_may_lose_one(kind: FailureKind,
                                                                              phase: WorkerPhase):
    failure = Failure(kind, "x")
    spent = worker(phase, restarts=3)
    assert decide(spent, failure, group(restart="on_failure", max_failed=2, given_up=1), NOW) == GiveUp(2)
    assert decide(worker(phase), failure, group(restart="never", max_failed=1), NOW) == GiveUp(1)
    aborted = Abort(WorkerPhase.LOST if kind in HUNG else WorkerPhase.FAILED)
    assert decide(spent, failure, group(restart="on_failure", max_failed=2, given_up=2), NOW) == aborted
    assert decide(worker(phase), failure, group(restart="never"), NOW) == aborted


@pytest.mark.parametrize("phase", list(WorkerPhase))
def test_a_requeue_is_followed_only_for_a_worker_still_watched(phase: WorkerPhase):
    expected = Rejoin() if phase in (WorkerPhase.STARTING, WorkerPhase.LAUNCHED, WorkerPhase.RUNNING,
                                     WorkerPhase.REQUEUED) else Ignore()
    assert decide(worker(phase), Failure(FailureKind.REQUEUED, "preempted"), group(), NOW) == expected


@pytest.mark.parametrize("kind", list(FailureKind))
def test_how_a_failure_is_stopped_and_told(kind: FailureKind):
    failure = Failure(kind, "no answer for 5.2 s")
    assert failure.hung == (kind in HUNG)
    assert failure.still_answers == (kind is FailureKind.REPORTED_ERROR)
    assert failure.reason == ("LOST: no answer for 5.2 s" if kind in HUNG else "no answer for 5.2 s")


def test_a_worker_shows_its_own_status_while_it_runs_and_the_controller_s_after():
    state = worker(WorkerPhase.LAUNCHED)
    assert state.status == "LAUNCHED" and state.placement == ""
    state.reported, state.address, state.node = "PAUSED", "tcp://10.0.0.7:4100", "n7"
    assert state.status == "PAUSED" and state.placement == " on node n7 (10.0.0.7)"
    state.last_reply = {"pid": 1}
    state.process_ended()
    assert state.ended_replies == [{"pid": 1}] and state.last_reply == {} and state.status == "LAUNCHED"
    for phase, shown in ((WorkerPhase.GIVEN_UP, "FAILED"), (WorkerPhase.FAILED, "ERROR"), (WorkerPhase.LOST, "LOST"),
                         (WorkerPhase.RESTARTING, "RESTARTING"), (WorkerPhase.REQUEUED, "REQUEUED"),
                         (WorkerPhase.COMPLETED, "COMPLETED")):
        state.phase = phase
        assert state.status == shown


def test_processes_that_ended_are_failures_unless_their_work_was_done():
    state = worker(WorkerPhase.RUNNING)
    killed = WorkerJobStatus(JobState.FAILED, -9, "killed by signal 9 (SIGKILL)")
    assert process_failure(state, killed) == Failure(
        FailureKind.PROCESS_ENDED, "its process ended (FAILED: killed by signal 9 (SIGKILL))")
    done = WorkerJobStatus(JobState.COMPLETED, 0)
    assert process_failure(state, done).detail == "its process ended (COMPLETED: exit code 0)"
    state.reported = "COMPLETED"
    assert process_failure(state, done) is None


def reply(**result) -> ControlReply:
    return ControlReply("g/0", True, result)


def test_status_replies_that_are_failures():
    assert reply_failure(reply(status="RUNNING", last_poll_age_s=3.0), 600.0) is None
    error = reply_failure(reply(status="ERROR", error={"type": "ValueError", "message": "bad row"}), 600.0)
    assert error.kind is FailureKind.REPORTED_ERROR and error.error.message == "bad row"
    stalled = reply_failure(reply(status="RUNNING", last_poll_age_s=601.0), 600.0)
    assert stalled.kind is FailureKind.STALLED and stalled.reason.startswith("LOST: its _poll has not returned for 601.0 s")
    paused = reply_failure(reply(status="PAUSED", last_poll_age_s=601.0), 600.0)
    assert paused.kind is FailureKind.PAUSED_TOO_LONG and "PAUSED for 601.0 s" in paused.reason
    assert reply_failure(reply(status="RUNNING", last_poll_age_s=1e6), 0.0) is None  # poll_stall_s=0: never


def test_silence_is_lost_after_lost_after_s_or_once_the_name_expired():
    timeouts = ControllerTimeouts(lost_after_s=5.0, keepalive_ttl_s=2.0)
    state = worker(WorkerPhase.RUNNING)
    state.last_answer = NOW - 1.0
    assert silence_failure(state, NOW, timeouts, lambda: False) is None  # a name may come back within its TTL
    state.last_answer = NOW - 3.0
    assert silence_failure(state, NOW, timeouts, lambda: True) is None
    assert silence_failure(state, NOW, timeouts, lambda: False).kind is FailureKind.NAME_EXPIRED
    state.last_answer = NOW - 5.5
    assert silence_failure(state, NOW, timeouts, lambda: True) == Failure(FailureKind.NO_ANSWER, "no answer for 5.5 s")
