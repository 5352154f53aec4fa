"""The controller's run: start the workers, then observe -> decide -> act until the run is done, then stop.

Start: launch every worker, wait for each to register its control address, configure and start them in dependency
order. Watch: every `timeouts.status_interval_s` poll the scheduler (processes that ended, jobs requeued) and every
worker's status (`zrl.controller.observe` turns what is wrong into a `Failure`), let `zrl.controller.supervisor.decide`
choose (relaunch after a backoff, go on without the worker, stop the run, or follow a requeue) and act on it. Stop:
whatever happened, pause and stop every worker, clear the trial's names, write the summary and print the report.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from typing import TextIO

from zrl.config import ExperimentConfig, to_plain
from zrl.controller import ending
from zrl.controller.observe import process_failures, record, status_failures
from zrl.controller.plan import RunPaths, worker_launch
from zrl.controller.progress import Progress
from zrl.controller.schedulers import JobState, Scheduler, WorkerJobStatus
from zrl.controller.supervisor import (
    Abort,
    Failure,
    FailureKind,
    GiveUp,
    GroupView,
    Ignore,
    Relaunch,
    WorkerFailure,
    WorkerPhase,
    WorkerState,
    decide,
)
from zrl.controller.trial import (
    TrialInUseError,
    claim_trial,
    connect_registered,
    control_name_alive,
    forget_control_name,
)
from zrl.controller.validate import group_levels
from zrl.nameresolve import NameResolveError, NameResolver, names
from zrl.redact import redact_plain
from zrl.streams.control import ControlClient, ControlReply
from zrl.streams.control_auth import ControlKey
from zrl.streams.control_key_file import write_control_key
from zrl.streams.curve import CurveKeys

STATUS_TIMEOUT_S = 1.0
STACK_DUMP_WAIT_S = 0.5
"""Time a stalled worker gets to write its stacks into its log before it is stopped."""
QUIESCE_S = 10.0
"""Longest wait at the end of a run for paused workers to finish the poll they are in."""


class Controller:
    """Runs one experiment trial to its end; `run()` returns the exit code (0 only on success)."""

    def __init__(self, config: ExperimentConfig, scheduler: Scheduler, resolver: NameResolver,
                 out: TextIO = sys.stdout):
        self.config, self.scheduler, self.resolver, self.out = config, scheduler, resolver, out
        self.paths = RunPaths.for_config(config)
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
            claim_trial(self.resolver, self.config)
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
            state = self.workers[failure.worker_id]
            self._say(ending.failure_report(failure.worker_id, failure.reason, failure.error, state,
                                            self.paths.log(state.group, state.index)))
        except KeyboardInterrupt:
            self._say("interrupted: stopping every worker")
            code = 130
        except (TimeoutError, RuntimeError) as exc:
            self._say(f"error: {exc}")
        except Exception:  # noqa: BLE001 - whatever broke, the workers are still stopped below
            self._say(f"error: the controller failed:\n{traceback.format_exc().rstrip()}")
        finally:
            with ending.signals_deferred():
                self.stop(code)
        return code

    def start(self) -> None:
        """Launch every worker, wait for them to register, then configure and start them in dependency order."""
        launches = [worker_launch(self.config, self.paths, s.group, s.index) for s in self.workers.values()]
        self.paths.create()
        write_control_key(self.paths.control_key, self.control_key)
        self.scheduler.submit(launches)
        self._say(f"launched {len(launches)} workers; logs in {self.paths.root / 'logs'}")
        self._wait_registered(list(self.workers))
        self.timeline["registered"] = time.monotonic() - self.started_at
        for level in group_levels(self.config):
            self._configure_and_start([w for w, s in self.workers.items() if s.group in level])
        self.timeline["running"] = time.monotonic() - self.started_at
        self._say(f"all {len(self.workers)} workers RUNNING after {self.timeline['running']:.1f} s")

    def _wait_registered(self, worker_ids: list[str]) -> None:
        """Connect to each worker once its control address appears, handling the failures of every worker meanwhile;
        a worker that failed again (relaunch pending, or given up) is no longer waited for."""
        deadline = time.monotonic() + self.config.timeouts.register_s
        waiting = set(worker_ids)
        while waiting:
            waiting = {w for w in waiting if self.workers[w].phase not in (WorkerPhase.RESTARTING, WorkerPhase.GIVEN_UP)}
            waiting -= connect_registered(self.resolver, self.client, self.config,
                                          {w: self.workers[w] for w in waiting})
            if not waiting:
                return
            self._check_processes()
            if time.monotonic() > deadline:
                held = [f"{w}: {job.state.value}" + (f" ({job.detail})" if job.detail else "")
                        for w in sorted(waiting) if (job := self.job_states.get(w)) is not None]
                raise TimeoutError(f"workers {sorted(waiting)} did not register within "
                                   f"{self.config.timeouts.register_s:g} s (timeouts.register_s); see their logs in "
                                   f"{self.paths.root / 'logs'}" + (f"; the scheduler says {'; '.join(held)}"
                                                                    if held else ""))
            time.sleep(0.02)

    def _configure_and_start(self, worker_ids: list[str]) -> None:
        for command in ("configure", "start"):
            by_group: dict[str, list[str]] = {}
            for worker_id in worker_ids:
                by_group.setdefault(self.workers[worker_id].group, []).append(worker_id)
            for group, ids in by_group.items():
                payload = {"config": to_plain(self.config.workers[group].config)} if command == "configure" else {}
                for worker_id, reply in self.client.request(ids, command, payload,
                                                            timeout=self.config.timeouts.request_s).items():
                    if not reply.ok:
                        raise WorkerFailure(worker_id, f"{command} failed", reply.error)
                    self._record(reply)
        for worker_id in worker_ids:
            self.workers[worker_id].phase = WorkerPhase.RUNNING

    # ---- watching: observe -> decide -> act ----

    def watch(self) -> None:
        """Watch the workers until the experiment is done; raises WorkerFailure, TimeoutError or KeyboardInterrupt."""
        max_run = self.config.timeouts.max_run_s
        while True:
            self._check_processes()
            self._check_statuses()
            self._restart_due(time.monotonic())
            if self._done():
                self.progress.print_final(self.workers, time.monotonic() - self.started_at)
                return
            self.progress.maybe_print(self.workers, time.monotonic() - self.started_at)
            if max_run and time.monotonic() - self.started_at > max_run:
                raise TimeoutError(f"the experiment ran longer than timeouts.max_run_s={max_run:g} s")
            time.sleep(self.config.timeouts.status_interval_s)

    def _done(self) -> bool:
        groups = self.config.done_when or tuple(self.config.workers)
        return all(s.status == "COMPLETED" for s in self.workers.values()
                   if s.group in groups and s.phase is not WorkerPhase.GIVEN_UP)

    def _check_processes(self) -> None:
        self.job_states = self.scheduler.poll()
        for worker_id, failure in process_failures(self.workers, self.job_states):
            self._act(worker_id, failure)

    def _check_statuses(self) -> None:
        active = [w for w, s in self.workers.items() if s.phase.answers]
        if not active:
            return
        timeouts = self.config.timeouts
        # A worker answers status from its control thread at once, so a short wait keeps every check prompt.
        replies = self.client.request(active, "status", timeout=min(STATUS_TIMEOUT_S, timeouts.lost_after_s / 2))
        held = {w for w, job in self.job_states.items() if job.state in (JobState.SUSPENDED, JobState.PENDING)}
        for worker_id, failure in status_failures(self.workers, replies, held, time.monotonic(), timeouts,
                                                  self._name_alive):
            if failure.kind is FailureKind.STALLED:
                self.scheduler.dump_stacks([worker_id])
                time.sleep(STACK_DUMP_WAIT_S)
            self._act(worker_id, failure)

    def _name_alive(self, worker_id: str) -> bool:
        return control_name_alive(self.resolver, self.config, worker_id, self.client.address(worker_id))

    def _record(self, reply: ControlReply) -> None:
        record(self.workers[reply.worker_id], reply, time.monotonic())

    def _act(self, worker_id: str, failure: Failure) -> None:
        """Carry out what `decide` chose for `failure` of `worker_id`; raises WorkerFailure when the run must stop."""
        state = self.workers[worker_id]
        spec = self.config.workers[state.group]
        given_up = sum(s.phase is WorkerPhase.GIVEN_UP for s in self.workers.values() if s.group == state.group)
        decision = decide(state, failure, GroupView(spec, given_up), time.monotonic())
        if isinstance(decision, Ignore):
            return
        if isinstance(decision, Abort):
            if not failure.still_answers:  # a worker in ERROR still answers, and is asked to exit at the end
                state.phase = decision.phase
            raise WorkerFailure(worker_id, failure.reason, failure.error)
        if failure.kind is FailureKind.REQUEUED:  # Rejoin: configured and started again once its new process runs
            self._say(f"worker {worker_id} was requeued by the scheduler ({failure.detail}); it is configured and "
                      "started again once it runs")
            if worker_id in self.client.workers:
                state.stale_address = self.client.address(worker_id)
                self.client.disconnect(worker_id)
            state.process_ended()
            state.phase = WorkerPhase.REQUEUED
            return
        assert isinstance(decision, (Relaunch, GiveUp))
        if isinstance(decision, Relaunch):
            state.restarts, state.relaunch_at = decision.restart, decision.at
        self._say(f"worker {worker_id} failed ({failure.reason}){state.placement}; "
                  f"{decision.outcome(state.group, spec)}")
        if failure.error is not None:
            self._say(f"  {failure.error}")
        self._retire(worker_id, hung=failure.hung)
        state.phase = decision.phase

    def _retire(self, worker_id: str, hung: bool) -> None:
        """Stop a failed worker's process and forget its address."""
        self.workers[worker_id].process_ended()
        # A hung process acts on no signal but SIGKILL, so it gets no grace period.
        self.scheduler.stop([worker_id], timeout=0 if hung else self.config.timeouts.stop_s)
        self.client.disconnect(worker_id)
        forget_control_name(self.resolver, self.config, worker_id)

    def _restart_due(self, now: float) -> None:
        """Relaunch the workers whose backoff has passed; take back those whose requeued job runs again."""
        for worker_id, state in self.workers.items():
            job = self.job_states.get(worker_id)
            relaunch = state.phase is WorkerPhase.RESTARTING and state.relaunch_at <= now
            if relaunch or (state.phase is WorkerPhase.REQUEUED and job is not None and job.state is JobState.RUNNING):
                state.phase, state.last_reply, state.reported = WorkerPhase.LAUNCHED, {}, ""
                if relaunch:
                    self.scheduler.submit([worker_launch(self.config, self.paths, state.group, state.index)])
                self._start_again(worker_id)

    def _start_again(self, worker_id: str) -> None:
        """Register, configure and start a worker whose process was started again; a failure meanwhile is handled
        by its group's restart policy."""
        self._wait_registered([worker_id])
        if self.workers[worker_id].phase is not WorkerPhase.LAUNCHED:
            return  # it failed again before it registered: its next relaunch is pending, or it was given up
        try:
            self._configure_and_start([worker_id])
        except WorkerFailure as failure:
            self._act(failure.worker_id, Failure(FailureKind.COMMAND_FAILED, failure.reason, failure.error))

    # ---- the end ----

    def stop(self, code: int) -> None:
        """Stop every worker (exit, then signals), clear the trial's names and write the summary."""
        connected = [w for w in self.client.workers if self.workers[w].phase.answers]
        if connected:
            # After a failure, stopping promptly matters more than exact final counters.
            ending.quiesce(self.client, connected, QUIESCE_S if code == 0 else 1.0, self._record)
        lost = [w for w, s in self.workers.items() if s.phase is WorkerPhase.LOST]
        if lost:
            # A hung process would not act on exit or SIGTERM anyway.
            self._keep_stopping(f"kill the lost workers {lost}", lambda: self.scheduler.stop(lost, timeout=0))
        stop_started = time.monotonic()
        if connected:
            self.client.request(connected, "exit", timeout=1.0)
            ending.wait_exited(self.scheduler, self.config.timeouts.stop_s / 2)
        self._keep_stopping("stop every worker",
                            lambda: self.scheduler.stop(None, timeout=self.config.timeouts.stop_s))
        self.timeline["stopped"] = time.monotonic() - stop_started
        self.client.close()
        ending.finish(self.config, self.paths, self.resolver, self.workers, code,
                      time.monotonic() - self.started_at, self.timeline, self._say)

    def _keep_stopping(self, what: str, step: Callable[[], None]) -> None:
        """Run one step of the shutdown; a failure is reported and the remaining steps still run."""
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - the other workers must still be stopped and the summary written
            self._say(f"warning: could not {what}: {type(exc).__name__}: {exc}")

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)
