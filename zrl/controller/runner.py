"""The controller's run: launch, register, configure and start in dependency order, watch, restart, stop.

Failure detection: every `timeouts.status_interval_s` the controller polls the scheduler (a worker process that
exited), asks every worker for its status (ERROR carries the worker's traceback) and checks its control name (an
expired keepalive, or no answer for `timeouts.lost_after_s`, is LOST; a name is only taken as expired once the
worker has not answered for `timeouts.keepalive_ttl_s`, since a restarted name service loses names that their
workers then register again). A failed worker of a group with
`restart=on_failure` is stopped at once and relaunched and reconfigured after `restart_backoff_s` (doubled for each
further restart of it), up to `max_restarts` times, while the others keep running. Beyond that, a worker of a group
that may lose `max_failed` workers is stopped and the run goes on without it; otherwise the run stops, prints the
worker's error and the tail of its log, and `run` returns 1. Whatever happens, every worker is stopped and the
trial's names are cleared before `run` returns. The counters of a worker's ended processes still count in the
sample accounting.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from zrl.config import ExperimentConfig, to_plain
from zrl.controller.plan import RunPaths, worker_launch
from zrl.controller.progress import Progress
from zrl.controller.report import (
    CURVE_FILE,
    accounting_text,
    plot_learning_curve,
    read_metrics,
    sample_accounting,
    training_table,
)
from zrl.controller.scheduler import JobState, Scheduler, WorkerJobStatus
from zrl.controller.validate import group_levels
from zrl.nameresolve import (
    NameEntryExistsError,
    NameEntryNotFoundError,
    NameResolveError,
    NameResolver,
    names,
)
from zrl.redact import redact_plain
from zrl.streams.control import ControlClient, ControlReply, ErrorInfo
from zrl.streams.control_auth import ControlKey
from zrl.streams.control_key_file import write_control_key
from zrl.streams.curve import CurveKeys

LOG_TAIL_LINES = 30
STATUS_TIMEOUT_S = 1.0
MAX_RESTART_BACKOFF_S = 60.0
"""Longest wait before a relaunch, however often the worker has failed."""
STACK_DUMP_WAIT_S = 0.5
"""Time a stalled worker gets to write its stacks into its log before it is stopped."""
QUIESCE_S = 10.0
"""Longest wait at the end of a run for paused workers to finish the poll they are in."""


class TrialInUseError(RuntimeError):
    """Another live controller runs the same experiment trial."""


class WorkerFailure(Exception):
    """A worker failed beyond what its group's restart policy allows."""

    def __init__(self, worker_id: str, reason: str, error: ErrorInfo | None = None):
        self.worker_id = worker_id
        self.reason = reason
        self.error = error
        super().__init__(f"worker {worker_id} failed: {reason}")


@dataclasses.dataclass
class WorkerState:
    """What the controller knows about one worker."""

    group: str
    index: int
    status: str = "LAUNCHED"
    last_reply: dict[str, Any] = dataclasses.field(default_factory=dict)
    last_answer: float = 0.0
    restarts: int = 0
    exiting: bool = False
    relaunch_at: float | None = None
    """When a failed worker that waits to be relaunched is due (time.monotonic()); None when none is pending."""
    requeues: int = 0
    """Restarts of its process by the scheduler itself (a requeued Slurm job), as last seen."""
    rejoining: bool = False
    """Requeued by the scheduler: it is configured and started again once its new process runs."""
    stale_address: str = ""
    """The control address of its process before the requeue, which its new process replaces."""
    ended_replies: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """The last status reply of each of its earlier processes, oldest first: their counters still count."""
    given_up: bool = False
    """Failed beyond its restarts in a group that may lose it (`max_failed`): the run goes on without it."""
    node: str = ""
    """Host name of the node its latest process runs on, as the worker reported it."""
    address: str = ""
    """The control address its latest process advertised."""

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


def restart_delay(backoff_s: float, restart: int) -> float:
    """Seconds before the `restart`-th relaunch (1-based) of one worker: `backoff_s`, doubled for each earlier one."""
    return min(backoff_s * 2 ** (restart - 1), max(backoff_s, MAX_RESTART_BACKOFF_S))


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


class Controller:
    """Runs one experiment trial to its end; `run()` returns the exit code (0 only on success)."""

    def __init__(self, config: ExperimentConfig, scheduler: Scheduler, resolver: NameResolver,
                 out: TextIO = sys.stdout):
        self.config = config
        self.paths = RunPaths.for_config(config)
        self.scheduler = scheduler
        self.resolver = resolver
        self.out = out
        self.control_key = ControlKey.generate()
        """This run's secret: workers take only control requests signed with it (see zrl.streams.control_auth)."""
        self.client = ControlClient(config.trial, sender="controller", key=self.control_key,
                                    curve=CurveKeys.derive(self.control_key) if config.security.curve == "on" else None)
        self.workers: dict[str, WorkerState] = {
            names.worker_id(group, i): WorkerState(group, i)
            for group, spec in config.workers.items() for i in range(spec.count)}
        self.progress = Progress(config.progress_interval_s, out)
        self.started_at = time.monotonic()
        self.job_states: dict[str, WorkerJobStatus] = {}
        """The scheduler's view of every worker process at the last check."""
        self.timeline: dict[str, float] = {}

    # ---- the run ----

    def run(self) -> int:
        try:
            self.claim_trial()
        except (TrialInUseError, NameResolveError) as exc:
            self._say(f"error: {exc}")
            return 1
        self.paths.create()
        self.paths.config.write_text(json.dumps(redact_plain(to_plain(self.config)), indent=2))
        code = 1
        try:
            self.start()
            self.watch()
            self._say(f"experiment {self.config.experiment}/{self.config.trial} done in "
                      f"{time.monotonic() - self.started_at:.1f} s")
            code = 0
        except WorkerFailure as failure:
            self._report_failure(failure)
        except KeyboardInterrupt:
            self._say("interrupted: stopping every worker")
            code = 130
        except (TimeoutError, RuntimeError) as exc:
            self._say(f"error: {exc}")
        except Exception:  # noqa: BLE001 - whatever broke, the workers are still stopped below
            self._say(f"error: the controller failed:\n{traceback.format_exc().rstrip()}")
        finally:
            with _signals_deferred():
                self.stop(code)
        return code

    def start(self) -> None:
        """Launch every worker, wait for them to register, then configure and start them in dependency order."""
        launches = [worker_launch(self.config, self.paths, s.group, s.index) for s in self.workers.values()]
        self.paths.create()
        write_control_key(self.paths.control_key, self.control_key)
        self.scheduler.submit(launches)
        self._say(f"launched {len(launches)} workers; logs in {self.paths.root / 'logs'}")
        self._wait_registered(list(self.workers), restart=False)
        self.timeline["registered"] = time.monotonic() - self.started_at
        for level in group_levels(self.config):
            ids = [w for w, s in self.workers.items() if s.group in level]
            self._configure_and_start(ids)
        self.timeline["running"] = time.monotonic() - self.started_at
        self._say(f"all {len(self.workers)} workers RUNNING after {self.timeline['running']:.1f} s")

    def claim_trial(self) -> None:
        """Take the trial's lease, then clear the names an earlier run of this trial left (they point at dead workers).

        Workers end themselves once the lease lapses: the controller may die by SIGKILL, OOM or with its node.
        """
        experiment, trial = self.config.experiment, self.config.trial
        lease = names.controller(experiment, trial)
        lease_ttl = self.config.timeouts.controller_lease_s / 2
        try:
            self.resolver.add(lease, f"{socket.gethostname()}:{os.getpid()}", keepalive_ttl=lease_ttl)
        except NameEntryExistsError:
            try:
                holder = self.resolver.get(lease)
            except NameEntryNotFoundError:
                holder = "that has just ended"
            raise TrialInUseError(
                f"trial {experiment}/{trial} is being run by the controller {holder}; pick another trial=, stop that "
                f"run, or if it died, wait up to {lease_ttl:g} s for its lease to lapse") from None
        for key in self.resolver.find_subtree(names.trial_root(experiment, trial)):
            if key != lease:
                try:
                    self.resolver.delete(key)
                except NameEntryNotFoundError:
                    pass

    def _wait_registered(self, worker_ids: list[str], restart: bool) -> None:
        """Connect to each worker once its control address appears; with `restart`, failures of any worker are
        handled by its group's restart policy, and a worker that failed again is no longer waited for."""
        deadline = time.monotonic() + self.config.timeouts.register_s
        waiting = set(worker_ids)
        while waiting:
            waiting = {w for w in waiting if self.workers[w].relaunch_at is None and not self.workers[w].given_up}
            for worker_id in sorted(waiting):
                try:
                    address = self.resolver.get(self._control_name(worker_id))
                except NameEntryNotFoundError:
                    continue
                if address == self.workers[worker_id].stale_address:
                    continue  # the process before a requeue; its successor will replace the name
                self.workers[worker_id].stale_address = ""
                self.client.connect(worker_id, address)
                self.workers[worker_id].address, self.workers[worker_id].node = address, ""
                self.workers[worker_id].last_answer = time.monotonic()
                waiting.discard(worker_id)
            if not waiting:
                return
            self._check_processes(restart=restart)
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers {sorted(waiting)} did not register within "
                                   f"{self.config.timeouts.register_s:g} s (timeouts.register_s); see their logs in "
                                   f"{self.paths.root / 'logs'}")
            time.sleep(0.02)

    def _configure_and_start(self, worker_ids: list[str]) -> None:
        timeout = self.config.timeouts.request_s
        for command in ("configure", "start"):
            by_group: dict[str, list[str]] = {}
            for worker_id in worker_ids:
                by_group.setdefault(self.workers[worker_id].group, []).append(worker_id)
            for group, ids in by_group.items():
                payload = {"config": to_plain(self.config.workers[group].config)} if command == "configure" else {}
                replies = self.client.request(ids, command, payload, timeout=timeout)
                for worker_id, reply in replies.items():
                    if not reply.ok:
                        raise WorkerFailure(worker_id, f"{command} failed", reply.error)
                    self._record(reply)

    # ---- watching ----

    def watch(self) -> None:
        """Watch the workers until the experiment is done; raises WorkerFailure, TimeoutError or KeyboardInterrupt."""
        interval = self.config.timeouts.status_interval_s
        max_run = self.config.timeouts.max_run_s
        while True:
            self._check_processes(restart=True)
            self._check_statuses()
            self._relaunch_due()
            self._rejoin_due()
            if self._done():
                self.progress.print_final(self.workers, time.monotonic() - self.started_at)
                return
            self.progress.maybe_print(self.workers, time.monotonic() - self.started_at)
            if max_run and time.monotonic() - self.started_at > max_run:
                raise TimeoutError(f"the experiment ran longer than timeouts.max_run_s={max_run:g} s")
            time.sleep(interval)

    def _done(self) -> bool:
        groups = self.config.done_when or tuple(self.config.workers)
        return all(s.status == "COMPLETED" for s in self.workers.values() if s.group in groups and not s.given_up)

    def _check_processes(self, restart: bool) -> None:
        self.job_states = self.scheduler.poll()
        for worker_id, job in self.job_states.items():
            state = self.workers.get(worker_id)
            if state is not None and job.requeues > state.requeues:
                self._follow_requeue(worker_id, job)
            if state is None or (state.exiting and not state.rejoining) or not job.state.finished:
                continue
            if job.exit_code == 0 and state.status == "COMPLETED":
                state.exiting = True  # finished its work and left on its own
                continue
            reason = f"its process ended ({job.state.value}: {job.detail or f'exit code {job.exit_code}'})"
            self._failed(worker_id, reason, None, restart)

    def _follow_requeue(self, worker_id: str, job: WorkerJobStatus) -> None:
        """The scheduler restarts this worker's process itself (Slurm requeue): wait for it instead of relaunching
        it, so no second copy runs; it is configured and started again once it registers."""
        state = self.workers[worker_id]
        state.requeues = job.requeues
        if state.exiting and not state.rejoining:
            return  # done with, or already being relaunched by the controller
        self._say(f"worker {worker_id} was requeued by the scheduler ({job.detail or job.state.value}); it is "
                  "configured and started again once it runs")
        if worker_id in self.client.workers:
            state.stale_address = self.client.address(worker_id)
            self.client.disconnect(worker_id)
        state.process_ended()
        state.status, state.exiting, state.rejoining = "REQUEUED", True, True

    def _rejoin_due(self) -> None:
        for worker_id, state in self.workers.items():
            job = self.job_states.get(worker_id)
            if not state.rejoining or job is None or job.state is not JobState.RUNNING:
                continue
            state.rejoining, state.exiting, state.status, state.last_reply = False, False, "LAUNCHED", {}
            self._wait_registered([worker_id], restart=True)
            if state.relaunch_at is None and not state.given_up:
                self._start_again(worker_id)

    def _check_statuses(self) -> None:
        active = [w for w, s in self.workers.items() if not s.exiting]
        if not active:
            return
        timeouts = self.config.timeouts
        # A worker answers status from its control thread at once, so a short wait keeps every check prompt.
        replies = self.client.request(active, "status", timeout=min(STATUS_TIMEOUT_S, timeouts.lost_after_s / 2))
        now = time.monotonic()
        held = {w for w, job in self.job_states.items() if job.state in (JobState.SUSPENDED, JobState.PENDING)}
        for worker_id, reply in replies.items():
            state = self.workers[worker_id]
            if worker_id in held and not reply.ok:
                state.last_answer = now  # it cannot answer while held; the clock starts again once it runs
                continue
            if reply.ok:
                # A worker that answers is alive, even while its name comes back after a suspension.
                self._record(reply)
                stalled = self._stall(worker_id, reply.result)
                if reply.result.get("status") == "ERROR":
                    self._failed(worker_id, "it reported ERROR",
                                 ErrorInfo.from_dict(reply.result.get("error") or {}), True)
                elif stalled is not None:
                    self._failed(worker_id, stalled, None, True)
                continue
            if now - state.last_answer > timeouts.lost_after_s:
                self._failed(worker_id, f"LOST: no answer for {now - state.last_answer:.1f} s", None, True)
                continue
            # A name expires only a whole TTL after its worker stopped refreshing it; one missing sooner was lost with
            # a restarted name service, and its worker registers it again once it runs.
            if now - state.last_answer > timeouts.keepalive_ttl_s and not self._name_alive(worker_id):
                self._failed(worker_id, "LOST: its control name expired from the name service", None, True)

    def _stall(self, worker_id: str, result: dict[str, Any]) -> str | None:
        """Why a worker that still answers counts as stuck (its _poll hangs, or it stays PAUSED), or None."""
        bound = self.config.timeouts.poll_stall_s
        idle_s = float(result.get("last_poll_age_s", 0.0))
        if bound <= 0 or idle_s <= bound:
            return None
        status = result.get("status")
        if status == "RUNNING":
            self.scheduler.dump_stacks([worker_id])
            time.sleep(STACK_DUMP_WAIT_S)
            return (f"LOST: its _poll has not returned for {idle_s:.1f} s (timeouts.poll_stall_s={bound:g}); "
                    "the stacks of its threads are in its log")
        if status == "PAUSED":
            return (f"it has been PAUSED for {idle_s:.1f} s without a resume (timeouts.poll_stall_s={bound:g})")
        return None

    def _name_alive(self, worker_id: str) -> bool:
        try:
            return self.resolver.get(self._control_name(worker_id)) == self.client.address(worker_id)
        except NameEntryNotFoundError:
            return False
        except NameResolveError:
            return True  # the name service itself is struggling; status replies decide

    def _record(self, reply: ControlReply) -> None:
        state = self.workers[reply.worker_id]
        state.last_reply = reply.result
        state.status = str(reply.result.get("status", state.status))
        state.node = str(reply.result.get("node", state.node))
        state.last_answer = time.monotonic()

    def _failed(self, worker_id: str, reason: str, error: ErrorInfo | None, restart: bool) -> None:
        state = self.workers[worker_id]
        spec = self.config.workers[state.group]
        if not restart or spec.restart != "on_failure" or state.restarts >= spec.max_restarts:
            if restart and self._may_lose(state.group):
                self._give_up(worker_id, reason, error)
                return
            state.status = "LOST" if reason.startswith("LOST") else "ERROR"
            state.exiting = not reason.startswith("it reported")  # a worker in ERROR still answers; others won't
            raise WorkerFailure(worker_id, reason, error)
        state.restarts += 1
        delay = restart_delay(spec.restart_backoff_s, state.restarts)
        self._say(f"worker {worker_id} failed ({reason}){state.placement}; restarting it "
                  f"({state.restarts}/{spec.max_restarts}) in {delay:g} s")
        if error is not None:
            self._say(f"  {error}")
        self._retire(worker_id, hung=reason.startswith("LOST"))
        state.relaunch_at = time.monotonic() + delay

    def _may_lose(self, group: str) -> bool:
        lost = sum(s.given_up for s in self.workers.values() if s.group == group)
        return lost < self.config.workers[group].max_failed

    def _give_up(self, worker_id: str, reason: str, error: ErrorInfo | None) -> None:
        """Stop a worker that failed for good, and go on with the other workers of its group."""
        state = self.workers[worker_id]
        state.given_up = True
        lost = sum(s.given_up for s in self.workers.values() if s.group == state.group)
        self._say(f"worker {worker_id} failed ({reason}){state.placement}; the experiment goes on without it "
                  f"({lost} of workers.{state.group}.max_failed={self.config.workers[state.group].max_failed} failed)")
        if error is not None:
            self._say(f"  {error}")
        self._retire(worker_id, hung=reason.startswith("LOST"))
        state.status = "FAILED"

    def _retire(self, worker_id: str, hung: bool) -> None:
        """Stop a failed worker's process and forget its address (it is relaunched once its backoff has passed, or
        given up)."""
        state = self.workers[worker_id]
        state.process_ended()
        state.status, state.exiting, state.rejoining = "RESTARTING", True, False
        # A hung process acts on no signal but SIGKILL, so it gets no grace period.
        self.scheduler.stop([worker_id], timeout=0 if hung else self.config.timeouts.stop_s)
        self.client.disconnect(worker_id)
        try:
            self.resolver.delete(self._control_name(worker_id))
        except NameEntryNotFoundError:
            pass

    def _relaunch_due(self) -> None:
        now = time.monotonic()
        for worker_id, state in self.workers.items():
            if state.relaunch_at is not None and state.relaunch_at <= now:
                self._relaunch(worker_id)

    def _relaunch(self, worker_id: str) -> None:
        state = self.workers[worker_id]
        state.status, state.last_reply, state.exiting, state.relaunch_at = "LAUNCHED", {}, False, None
        self.scheduler.submit([worker_launch(self.config, self.paths, state.group, state.index)])
        self._wait_registered([worker_id], restart=True)
        # Else it failed again before it registered: it waits for its next relaunch, or was given up.
        if state.relaunch_at is None and not state.given_up:
            self._start_again(worker_id)

    def _start_again(self, worker_id: str) -> None:
        """Configure and start a worker whose process was started again; a failure is handled by its restart policy."""
        try:
            self._configure_and_start([worker_id])
        except WorkerFailure as failure:
            self._failed(failure.worker_id, failure.reason, failure.error, restart=True)

    # ---- the end ----

    def stop(self, code: int) -> None:
        """Stop every worker (exit, then signals), clear the trial's names and write the summary."""
        connected = [w for w in self.client.workers if not self.workers[w].exiting]
        if connected:
            # After a failure, stopping promptly matters more than exact final counters.
            self._quiesce(connected, QUIESCE_S if code == 0 else 1.0)
        lost = [w for w, s in self.workers.items() if s.status == "LOST"]
        if lost:
            # A hung process would not act on exit or SIGTERM anyway.
            self._keep_stopping(f"kill the lost workers {lost}", lambda: self.scheduler.stop(lost, timeout=0))
        for state in self.workers.values():
            state.exiting = True
        stop_started = time.monotonic()
        if connected:
            self.client.request(connected, "exit", timeout=1.0)
            self._wait_exited(self.config.timeouts.stop_s / 2)
        self._keep_stopping("stop every worker",
                            lambda: self.scheduler.stop(None, timeout=self.config.timeouts.stop_s))
        self.timeline["stopped"] = time.monotonic() - stop_started
        self.client.close()
        try:
            self.resolver.clear_subtree(names.trial_root(self.config.experiment, self.config.trial))
        except NameResolveError as exc:
            self._say(f"warning: could not clear the trial's names: {exc}")
        self.paths.control_key.unlink(missing_ok=True)  # no worker is left to read it
        accounting = sample_accounting({w: [*s.ended_replies, s.last_reply] for w, s in self.workers.items()})
        self._write_summary(code, accounting)
        try:
            self._report(accounting)
        except Exception:  # noqa: BLE001 - the run is over; a broken report must not change its exit code
            self._say(f"warning: could not write the end-of-run report:\n{traceback.format_exc().rstrip()}")

    def _keep_stopping(self, what: str, step: Callable[[], None]) -> None:
        """Run one step of the shutdown; a failure is reported and the remaining steps still run."""
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - the other workers must still be stopped and the summary written
            self._say(f"warning: could not {what}: {type(exc).__name__}: {exc}")

    def _report(self, accounting: dict[str, Any] | None) -> None:
        """The training table, the learning curve and the sample accounting, where the run produced them."""
        records = read_metrics(self.paths.root / "metrics.jsonl")
        if records:
            self._say(training_table(records))
            curve = plot_learning_curve(records, self.paths.root / CURVE_FILE)
            if curve is not None:
                self._say(f"learning curve: {curve}")
        if accounting is not None:
            self._say(accounting_text(accounting))

    def _quiesce(self, worker_ids: list[str], bound_s: float) -> None:
        """Pause the running workers and wait (a bounded time) for their current polls to return, so the final
        counters of all workers describe one moment and the sample accounting can balance."""
        self.client.request(worker_ids, "pause", timeout=1.0)  # COMPLETED and ERROR workers refuse; that is fine
        deadline = time.monotonic() + bound_s
        while True:
            replies = self.client.request(worker_ids, "status", timeout=1.0)
            for reply in replies.values():
                if reply.ok:
                    self._record(reply)
            busy = [w for w, r in replies.items() if r.ok and r.result.get("in_poll")]
            if not busy or time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def _wait_exited(self, timeout: float) -> None:
        """Give workers that were told to exit a moment to leave on their own before they are signalled."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(job.state.finished for job in self.scheduler.poll().values()):
                return
            time.sleep(0.02)

    def _write_summary(self, code: int, accounting: dict[str, Any] | None) -> None:
        summary = {
            "experiment": self.config.experiment, "trial": self.config.trial, "exit_code": code,
            "elapsed_s": time.monotonic() - self.started_at, "timeline_s": self.timeline,
            "sample_accounting": accounting,
            "workers": {w: {"status": s.status, "restarts": s.restarts, "last": s.last_reply,
                            "ended_processes": s.ended_replies}
                        for w, s in self.workers.items()},
        }
        self.paths.create()
        self.paths.summary.write_text(json.dumps(redact_plain(summary), indent=2, default=str))

    def _report_failure(self, failure: WorkerFailure) -> None:
        state = self.workers[failure.worker_id]
        log = self.paths.log(state.group, state.index)
        self._say(f"error: worker {failure.worker_id} failed: {failure.reason}{state.placement}")
        if failure.error is not None:
            self._say(f"worker error: {failure.error}")
            if failure.error.traceback:
                self._say(failure.error.traceback.rstrip())
        self._say(f"last lines of {log}:\n{log_tail(log)}")
        self._say("stopping the experiment")

    # ---- helpers ----

    def _control_name(self, worker_id: str) -> str:
        return names.worker_control(self.config.experiment, self.config.trial, worker_id)

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)


class _signals_deferred:
    """Hold SIGINT/SIGTERM/SIGHUP while the controller stops its workers, so a second Ctrl-C cannot leave orphans."""

    def __enter__(self) -> None:
        self._saved: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                self._saved[sig] = signal.signal(sig, signal.SIG_IGN)

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
