"""What the controller sees of its workers, turned into `Failure`s: processes that ended or were requeued (the
scheduler's view), and status replies (a reported ERROR, a `_poll` that does not return, a worker PAUSED too long,
no answer, an expired control name)."""

from __future__ import annotations

from collections.abc import Callable

from zrl.config import ControllerTimeouts
from zrl.controller.schedulers import WorkerJobStatus
from zrl.controller.supervisor import Failure, FailureKind, WorkerPhase, WorkerState
from zrl.streams.control import ControlReply, ErrorInfo


def process_failure(state: WorkerState, job: WorkerJobStatus) -> Failure | None:
    """Why a watched worker whose process ended failed, or None when it finished its work and left."""
    if job.exit_code == 0 and state.reported == "COMPLETED":
        return None
    return Failure(FailureKind.PROCESS_ENDED,
                   f"its process ended ({job.state.value}: {job.detail or f'exit code {job.exit_code}'})")


def reply_failure(reply: ControlReply, poll_stall_s: float) -> Failure | None:
    """What an answering worker's status reply says went wrong: ERROR, a stuck `_poll`, a worker left PAUSED."""
    result = reply.result
    if result.get("status") == "ERROR":
        return Failure(FailureKind.REPORTED_ERROR, "it reported ERROR", ErrorInfo.from_dict(result.get("error") or {}))
    idle_s = float(result.get("last_poll_age_s", 0.0))
    if poll_stall_s <= 0 or idle_s <= poll_stall_s:
        return None
    if result.get("status") == "RUNNING":
        return Failure(FailureKind.STALLED, f"its _poll has not returned for {idle_s:.1f} s "
                       f"(timeouts.poll_stall_s={poll_stall_s:g}); the stacks of its threads are in its log")
    if result.get("status") == "PAUSED":
        return Failure(FailureKind.PAUSED_TOO_LONG, f"it has been PAUSED for {idle_s:.1f} s without a resume "
                       f"(timeouts.poll_stall_s={poll_stall_s:g})")
    return None


def silence_failure(state: WorkerState, now: float, timeouts: ControllerTimeouts,
                    name_alive: Callable[[], bool]) -> Failure | None:
    """Why a worker that did not answer counts as lost: silent for `lost_after_s`, or its control name expired.

    A name expires only a whole TTL after its worker stopped refreshing it; one missing sooner was lost with a
    restarted name service, and its worker registers it again once it runs.
    """
    silent_s = now - state.last_answer
    if silent_s > timeouts.lost_after_s:
        return Failure(FailureKind.NO_ANSWER, f"no answer for {silent_s:.1f} s")
    if silent_s > timeouts.keepalive_ttl_s and not name_alive():
        return Failure(FailureKind.NAME_EXPIRED, "its control name expired from the name service")
    return None


def record(state: WorkerState, reply: ControlReply, now: float) -> None:
    """Take a worker's answer: its status, its counters, the node it runs on; it is alive as of `now`."""
    state.last_reply = reply.result
    state.reported = str(reply.result.get("status", state.reported))
    state.node = str(reply.result.get("node", state.node))
    state.last_answer = now


def process_failures(workers: dict[str, WorkerState], jobs: dict[str, WorkerJobStatus]) -> list[tuple[str, Failure]]:
    """The failures the scheduler's view shows: requeued jobs, and watched workers whose process ended without
    finishing its work (those that finished become COMPLETED here)."""
    failures = []
    for worker_id, job in jobs.items():
        state = workers.get(worker_id)
        if state is None:
            continue
        if job.requeues > state.requeues:
            state.requeues = job.requeues
            failures.append((worker_id, Failure(FailureKind.REQUEUED, job.detail or job.state.value)))
        if not state.phase.watched or not job.state.finished:
            continue
        failure = process_failure(state, job)
        if failure is None:
            state.phase = WorkerPhase.COMPLETED  # finished its work and left on its own
        else:
            failures.append((worker_id, failure))
    return failures


def status_failures(workers: dict[str, WorkerState], replies: dict[str, ControlReply], held: set[str], now: float,
                    timeouts: ControllerTimeouts, name_alive: Callable[[str], bool]) -> list[tuple[str, Failure]]:
    """The failures the workers' status replies (or their silence) show; answers are recorded. A worker whose job
    the scheduler holds (suspended, pending) cannot answer: its clock starts again once it runs."""
    failures = []
    for worker_id, reply in replies.items():
        state = workers[worker_id]
        if worker_id in held and not reply.ok:
            state.last_answer = now
            continue
        if reply.ok:
            record(state, reply, now)  # a worker that answers is alive, even while its name comes back
            failure = reply_failure(reply, timeouts.poll_stall_s)
        else:
            failure = silence_failure(state, now, timeouts, lambda w=worker_id: name_alive(w))
        if failure is not None:
            failures.append((worker_id, failure))
    return failures
