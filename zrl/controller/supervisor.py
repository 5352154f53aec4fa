"""What the controller does about a worker that failed, decided in one pure function, and what it knows of a worker.

A worker is in one `WorkerPhase`. The controller observes its process (the scheduler), its answers (status
replies) and its control name, and turns what went wrong into a `Failure`; `decide` maps the failure, the worker's
state and its group's policy to one decision:

| failure                                          | the worker and its group                          | decision   |
|--------------------------------------------------|---------------------------------------------------|------------|
| any, while the run starts                        | (phase STARTING)                                  | `Abort`    |
| any                                              | `restart=on_failure`, restarts < `max_restarts`   | `Relaunch` after `restart_delay` |
| any                                              | otherwise, fewer than `max_failed` given up       | `GiveUp`   |
| any                                              | otherwise                                         | `Abort`    |
| its job was requeued by the scheduler (REQUEUED) | being relaunched, given up or done with           | `Ignore`   |
| its job was requeued by the scheduler (REQUEUED) | otherwise                                         | `Rejoin`   |

A failure is `hung` when the process may not act on signals (no answer, an expired name, a `_poll` that does not
return): it is killed without a grace period. It `still_answers` when the worker reported ERROR itself: at the end
of the run it is asked to exit like the healthy ones.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, ClassVar

from zrl.config import WorkerGroupConfig
from zrl.streams.control import ErrorInfo

MAX_RESTART_BACKOFF_S = 60.0
"""Longest wait before a relaunch, however often the worker has failed."""


class WorkerPhase(enum.Enum):
    STARTING = "STARTING"
    """Launched with the run, not yet started: a failure stops the run."""
    LAUNCHED = "LAUNCHED"
    """Relaunched after a failure, not yet started again."""
    RUNNING = "RUNNING"
    """Started and watched; its own status is the one it reports."""
    RESTARTING = "RESTARTING"
    """Failed, stopped, waiting for its relaunch."""
    REQUEUED = "REQUEUED"
    """The scheduler restarts its process (a requeued Slurm job); it rejoins once its new process runs."""
    GIVEN_UP = "FAILED"
    """Failed for good in a group that may lose it: the run goes on without it."""
    COMPLETED = "COMPLETED"
    """Finished its work and its process left."""
    LOST = "LOST"
    """Stopped the run: it no longer answered."""
    FAILED = "ERROR"
    """Stopped the run: it failed."""

    @property
    def answers(self) -> bool:
        """Its process is expected to answer control requests."""
        return self in (WorkerPhase.STARTING, WorkerPhase.LAUNCHED, WorkerPhase.RUNNING)

    @property
    def watched(self) -> bool:
        """Its process and answers are checked (a requeued worker's process too: its new run may fail)."""
        return self in (WorkerPhase.STARTING, WorkerPhase.LAUNCHED, WorkerPhase.RUNNING, WorkerPhase.REQUEUED)


class FailureKind(enum.Enum):
    PROCESS_ENDED = "process ended"
    REPORTED_ERROR = "reported error"
    NO_ANSWER = "no answer"
    NAME_EXPIRED = "name expired"
    STALLED = "stalled"
    """Its `_poll` has not returned for `timeouts.poll_stall_s`."""
    PAUSED_TOO_LONG = "paused too long"
    COMMAND_FAILED = "command failed"
    """It refused or did not answer `configure` or `start`."""
    REQUEUED = "requeued"
    """Not a failure of the worker: the scheduler restarts its process itself."""


_HUNG = (FailureKind.NO_ANSWER, FailureKind.NAME_EXPIRED, FailureKind.STALLED)


@dataclasses.dataclass(frozen=True)
class Failure:
    kind: FailureKind
    detail: str
    """What was seen, for people: 'no answer for 5.2 s', 'its process ended (FAILED: exit code 1)'."""
    error: ErrorInfo | None = None
    """The worker's own error (type, message, traceback), when it reported one."""

    @property
    def hung(self) -> bool:
        return self.kind in _HUNG

    @property
    def still_answers(self) -> bool:
        return self.kind is FailureKind.REPORTED_ERROR

    @property
    def reason(self) -> str:
        """The failure as the run's messages print it: LOST ones say so."""
        return f"LOST: {self.detail}" if self.hung else self.detail


@dataclasses.dataclass
class WorkerState:
    """What the controller knows about one worker."""

    group: str
    index: int
    phase: WorkerPhase = WorkerPhase.STARTING
    reported: str = ""
    """The status in its last reply (READY, RUNNING, PAUSED, COMPLETED, ERROR, ...); empty before any."""
    last_reply: dict[str, Any] = dataclasses.field(default_factory=dict)
    last_answer: float = 0.0
    restarts: int = 0
    relaunch_at: float = 0.0
    """When a RESTARTING worker is due for its relaunch (time.monotonic())."""
    requeues: int = 0
    """Restarts of its process by the scheduler itself (a requeued Slurm job), as last seen."""
    stale_address: str = ""
    """The control address of its process before a requeue, which its new process replaces."""
    ended_replies: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """The last status reply of each of its earlier processes, oldest first: their counters still count."""
    node: str = ""
    """Host name of the node its latest process runs on, as the worker reported it."""
    address: str = ""
    """The control address its latest process advertised."""

    @property
    def status(self) -> str:
        """Its status for people and the summary: its own while it runs, else the controller's phase."""
        if self.phase.answers:
            return self.reported or WorkerPhase.LAUNCHED.value
        return self.phase.value

    @property
    def placement(self) -> str:
        """' on node N (address)' for messages about this worker, or '' before its process registered."""
        host = self.address.removeprefix("tcp://").rsplit(":", 1)[0]
        if not host:
            return ""
        return f" on node {self.node} ({host})" if self.node else f" at {host}"

    def process_ended(self) -> None:
        """Keep the last reply of a process that has ended, so the sample accounting still counts what it did."""
        if self.last_reply:
            self.ended_replies.append(self.last_reply)
        self.last_reply = {}
        self.reported = ""


@dataclasses.dataclass(frozen=True)
class Relaunch:
    restart: int
    """Which restart of the worker this is (1-based)."""
    at: float
    """When to relaunch it (time.monotonic())."""
    delay_s: float
    phase: ClassVar[WorkerPhase] = WorkerPhase.RESTARTING

    def outcome(self, group: str, spec: WorkerGroupConfig) -> str:
        return f"restarting it ({self.restart}/{spec.max_restarts}) in {self.delay_s:g} s"


@dataclasses.dataclass(frozen=True)
class GiveUp:
    given_up: int
    """Workers of the group given up, this one included."""
    phase: ClassVar[WorkerPhase] = WorkerPhase.GIVEN_UP

    def outcome(self, group: str, spec: WorkerGroupConfig) -> str:
        return (f"the experiment goes on without it ({self.given_up} of workers.{group}.max_failed={spec.max_failed} "
                "failed)")


@dataclasses.dataclass(frozen=True)
class Abort:
    phase: WorkerPhase
    """LOST or FAILED: how the worker that stops the run is shown."""


@dataclasses.dataclass(frozen=True)
class Rejoin:
    pass


@dataclasses.dataclass(frozen=True)
class Ignore:
    pass


Decision = Relaunch | GiveUp | Abort | Rejoin | Ignore


@dataclasses.dataclass(frozen=True)
class GroupView:
    """A worker group's policy and how many of its workers were given up so far."""

    spec: WorkerGroupConfig
    given_up: int = 0


def restart_delay(backoff_s: float, restart: int) -> float:
    """Seconds before the `restart`-th relaunch (1-based) of one worker: `backoff_s`, doubled for each earlier one."""
    return min(backoff_s * 2 ** (restart - 1), max(backoff_s, MAX_RESTART_BACKOFF_S))


def decide(state: WorkerState, failure: Failure, group: GroupView, now: float) -> Decision:
    """What to do about `failure` of the worker in `state` (the table in this module's docstring)."""
    if failure.kind is FailureKind.REQUEUED:
        return Rejoin() if state.phase.watched else Ignore()
    spec = group.spec
    if state.phase is not WorkerPhase.STARTING and spec.restart == "on_failure" \
            and state.restarts < spec.max_restarts:
        delay = restart_delay(spec.restart_backoff_s, state.restarts + 1)
        return Relaunch(state.restarts + 1, now + delay, delay)
    if state.phase is not WorkerPhase.STARTING and group.given_up < spec.max_failed:
        return GiveUp(group.given_up + 1)
    return Abort(WorkerPhase.LOST if failure.hung else WorkerPhase.FAILED)


class WorkerFailure(Exception):
    """A worker failed beyond what its group's restart policy allows."""

    def __init__(self, worker_id: str, reason: str, error: ErrorInfo | None = None):
        self.worker_id, self.reason, self.error = worker_id, reason, error
        super().__init__(f"worker {worker_id} failed: {reason}")
