"""The `slurm` scheduler: one sbatch job per worker group, one `srun` step per worker (see `sbatch.py`).

State comes from `squeue -t all` (job state and reason), from the per-worker exit files the job script writes,
and, for a job that ended without them, from `scontrol show job` (ExitCode). `sacct` is not used, so clusters
without accounting work too. The Slurm client calls themselves are in `slurm_commands.py`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from zrl.controller.schedulers.base import JobState, Scheduler, SlurmOptions, WorkerJobStatus, WorkerLaunch
from zrl.controller.schedulers.processes import write_private
from zrl.controller.schedulers.sbatch import (
    exit_file,
    job_name,
    render_script,
    step_name,
    stop_file,
    validate_launches,
    validate_options,
)
from zrl.controller.schedulers.slurm_commands import SlurmError, run, sbatch
from zrl.redact import redact_text

log = logging.getLogger(__name__)

# How long a submitted job may be missing from squeue before it counts as vanished.
_LIST_GRACE_S = 60.0
_GONE_ERRORS = ("Invalid job id", "already completing or completed")
# How long SIGKILLed jobs and steps may take to leave squeue before `stop` takes their nodes for unreachable and
# stops waiting for them (a healthy node ends a SIGKILLed step within seconds).
_KILL_WAIT_S = 10.0

_STATE_MAP = {
    **dict.fromkeys(("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD",
                     "POWER_UP_NODE"), JobState.PENDING),
    **dict.fromkeys(("RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"), JobState.RUNNING),
    **dict.fromkeys(("SUSPENDED", "STOPPED"), JobState.SUSPENDED),
    "COMPLETED": JobState.COMPLETED,
    **dict.fromkeys(("FAILED", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"), JobState.FAILED),
    **dict.fromkeys(("CANCELLED", "PREEMPTED"), JobState.CANCELLED),
    "TIMEOUT": JobState.TIMEOUT,
    "NODE_FAIL": JobState.NODE_FAIL,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
}
# Slurm states in which processes of the job may still be alive.
_LIVE_SLURM_STATES = {"COMPLETING", "SIGNALING", "STAGE_OUT"}


def map_slurm_state(state: str) -> JobState:
    """The JobState for a Slurm job state as squeue prints it (`CANCELLED by 0` counts as CANCELLED)."""
    return _STATE_MAP.get(state.split()[0].rstrip("+") if state.strip() else "", JobState.UNKNOWN)


@dataclass
class _Job:
    job_id: str
    name: str
    launches: dict[str, WorkerLaunch]
    slurm_state: str = ""
    reason: str = ""
    exit_code: int | None = None
    exit_code_checked: bool = False
    seen: bool = False
    started: bool = False
    """Seen running since its last (re)queue."""
    requeues: int = 0
    """Slurm's restart count of the job (SLURM_RESTART_COUNT of its current run)."""
    requeue_checked: bool = False
    """scontrol was asked about a requeue since the job's current run began."""
    vanished: bool = False
    """squeue no longer lists the job (purged after MinJobAge, or never listed within _LIST_GRACE_S)."""
    nodes: str = ""
    """The job's nodes as squeue prints them (e.g. n[1-2]); empty before it runs."""
    submitted_at: float = field(default_factory=time.monotonic)

    @property
    def state(self) -> JobState:
        if self.vanished:
            return JobState.FAILED
        return map_slurm_state(self.slurm_state) if self.seen else JobState.UNKNOWN

    @property
    def alive(self) -> bool:
        return not self.state.finished or self.slurm_state in _LIVE_SLURM_STATES


@dataclass
class _Worker:
    launch: WorkerLaunch
    job: _Job
    stopped: bool = False
    node: str = ""
    """The node its step runs on, once asked (only when a node of its job stopped answering)."""


class SlurmScheduler(Scheduler):
    """Runs worker groups as Slurm jobs; job scripts, job output and exit records live in `{run_dir}/slurm/`."""

    def __init__(self, options: SlurmOptions, run_dir: Path, *, cwd: Path | None = None):
        validate_options(options)
        self.options = options
        self.cwd = (cwd or Path.cwd()).resolve()
        self.run_dir = (self.cwd / run_dir).resolve()
        self.state_dir = self.run_dir / "slurm"
        self._jobs: dict[str, _Job] = {}
        self._workers: dict[str, _Worker] = {}
        self._last_query = -float("inf")
        self._unreachable: set[str] = set()
        """Nodes on which SIGKILLed steps did not end within _KILL_WAIT_S: their jobs are no longer waited for."""
        self._hostnames: dict[str, set[str]] = {}

    # --- submitting ---------------------------------------------------------------------------------------------

    def _name_for(self, launches: list[WorkerLaunch]) -> str:
        relaunch = len(launches) == 1 and launches[0].worker_id in self._workers
        return job_name(self.run_dir, launches[0].group, launches[0].index if relaunch else None)

    @staticmethod
    def _by_group(launches: list[WorkerLaunch]) -> list[list[WorkerLaunch]]:
        if not launches:
            validate_launches(launches)
        groups: dict[str, list[WorkerLaunch]] = {}
        for launch in launches:
            groups.setdefault(launch.group, []).append(launch)
        return list(groups.values())

    def _render(self, members: list[WorkerLaunch]) -> tuple[str, str]:
        name = self._name_for(members)
        return name, render_script(members, self.options, name=name, state_dir=self.state_dir, cwd=self.cwd)

    def describe(self, launches: list[WorkerLaunch]) -> str:
        """The sbatch script of every group among `launches` (one job each), as `submit` would write them."""
        texts = []
        for members in self._by_group(launches):
            name, script = self._render(members)
            texts.append(f"# sbatch --parsable {self.state_dir / name}.sbatch\n{script}")
        return redact_text("\n".join(texts))

    def submit(self, launches: list[WorkerLaunch]) -> None:
        """Submit one job per worker group among `launches`; a single known worker becomes its own relaunch job."""
        for launch in launches:
            current = self._workers.get(launch.worker_id)
            if current is not None and not current.stopped and not self._worker_finished(current):
                raise ValueError(f"worker {launch.worker_id} is still running in Slurm job {current.job.job_id}; "
                                 "stop it before relaunching it")
        # Render every script first, so bad input submits nothing.
        rendered = [(members, *self._render(members)) for members in self._by_group(list(launches))]
        (self.state_dir / "exit").mkdir(parents=True, exist_ok=True)
        for launch in launches:
            (self.cwd / launch.log_path).parent.mkdir(parents=True, exist_ok=True)
        for members, name, script in rendered:
            script_path = self.state_dir / f"{name}.sbatch"
            write_private(script_path, script)
            job_id = sbatch(script_path)
            job = _Job(job_id, name, {launch.worker_id: launch for launch in members})
            self._jobs[job_id] = job
            for launch in members:
                self._workers[launch.worker_id] = _Worker(launch, job)
            log.info("submitted Slurm job %s (%s): %s", job_id, name, ", ".join(job.launches))
        self._last_query = -float("inf")

    def job_ids(self) -> dict[str, str]:
        """The Slurm job id that runs each worker now, keyed by worker id."""
        return {worker_id: worker.job.job_id for worker_id, worker in self._workers.items()}

    # --- polling ------------------------------------------------------------------------------------------------

    def _refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_query < self.options.poll_interval_s:
            return
        pending = [job for job in self._jobs.values() if job.alive]
        if not pending:
            return
        try:
            output = run(["squeue", "-h", "-t", "all", "-j", ",".join(job.job_id for job in pending),
                           "-o", "%i|%T|%N|%r"], "poll", ok_errors=("Invalid job id",))
        except SlurmError as error:
            if isinstance(error.__cause__, FileNotFoundError):
                raise
            log.warning("%s; keeping the last known job states", error)
            return
        self._last_query = time.monotonic()
        listed = set()
        for line in output.splitlines():
            job_id, state, nodes, reason = (line.split("|", 3) + ["", "", ""])[:4]
            job = self._jobs.get(job_id.strip())
            if job is not None:
                job.slurm_state, job.reason, job.seen = state.strip(), reason.strip(), True
                job.nodes = nodes.strip() or job.nodes
                listed.add(job.job_id)
                self._note_requeue(job)
        for job in pending:
            if job.job_id not in listed and (job.seen or self._last_query - job.submitted_at > _LIST_GRACE_S):
                job.vanished = True
                job.reason = "no longer listed by squeue"
        self._forgive_nodes([job for job in pending if not job.alive and not job.vanished])

    def _forgive_nodes(self, ended: list[_Job]) -> None:
        """A job that Slurm saw end on a node taken for unreachable: the node answers again (healed, or it was only
        slow), so what runs on it is waited for again."""
        for job in ended:
            back = sorted(self._unreachable & self._nodes_of(job.nodes)) if self._on_lost_node(job) else []
            if back:
                self._unreachable -= set(back)
                log.warning("Slurm node %s answers again (job %s ended)", ", ".join(back), job.job_id)

    def _note_requeue(self, job: _Job) -> None:
        """Track Slurm's restart count: a job seen running that is pending again was requeued (preemption,
        `scontrol requeue`, a node failure) and will run its workers afresh under the same job id."""
        if job.state is JobState.RUNNING or job.state is JobState.SUSPENDED:
            job.started = True
        elif job.state is JobState.PENDING and job.started:
            self._check_requeued(job)

    def _check_requeued(self, job: _Job) -> bool:
        """Ask scontrol whether `job` was requeued since we last looked; if so, start following its new run."""
        job.requeue_checked = True
        restarts = re.search(r"\bRestarts=(\d+)", _show_job(job.job_id))
        if restarts is None or int(restarts[1]) <= job.requeues:
            return False
        job.requeues, job.started, job.requeue_checked = int(restarts[1]), False, False
        job.exit_code, job.exit_code_checked = None, False
        job.slurm_state = "REQUEUED"  # pending again, whatever squeue showed last (COMPLETING, PREEMPTED)
        log.warning("Slurm job %s was requeued (restart %d)", job.job_id, job.requeues)
        return True

    def _job_exit_code(self, job: _Job) -> int | None:
        if not job.exit_code_checked and job.state.finished and not job.vanished:
            job.exit_code_checked = True
            for token in _show_job(job.job_id).split():
                if token.startswith("ExitCode="):
                    code, _, signal = token.removeprefix("ExitCode=").partition(":")
                    if code.isdigit() and signal.isdigit():
                        # A job killed by a signal reports 0:SIG; shells report that as 128 + SIG.
                        job.exit_code = int(code) or (128 + int(signal) if int(signal) else 0)
        return job.exit_code

    def _read_exit_code(self, worker: _Worker) -> int | None:
        try:
            text = exit_file(self.state_dir, worker.launch, worker.job.job_id, worker.job.requeues).read_text().strip()
        except OSError:
            return None
        return int(text) if text.lstrip("-").isdigit() else None

    def _worker_finished(self, worker: _Worker) -> bool:
        return self._worker_status(worker).state.finished

    def _failure(self, worker: _Worker, state: JobState, code: int | None, what: str) -> WorkerJobStatus:
        job = worker.job
        detail = f"{what} (Slurm job {job.job_id} {job.slurm_state or 'state unknown'}"
        detail += f", reason {job.reason})" if job.reason and job.reason != "None" else ")"
        return WorkerJobStatus(state, code, f"{detail}; log {self.cwd / worker.launch.log_path}")

    def _worker_status(self, worker: _Worker) -> WorkerJobStatus:
        job = worker.job
        code = self._read_exit_code(worker)
        if code not in (None, 0) and job.alive and not job.requeue_checked and self._check_requeued(job):
            code = self._read_exit_code(worker)  # the record was of the run before the requeue
        job_state = job.state
        if code == 0:
            return WorkerJobStatus(JobState.COMPLETED, 0)
        if worker.stopped and (code is not None or job_state.finished or self._on_lost_node(job)):
            return WorkerJobStatus(JobState.CANCELLED, code, f"stopped by the controller (Slurm job {job.job_id})")
        if code is None and self._worker_on_lost_node(worker):
            return self._failure(worker, JobState.NODE_FAIL, None, f"its node {worker.node} does not answer")
        if code is not None:
            special = job_state if job_state in (JobState.TIMEOUT, JobState.OUT_OF_MEMORY, JobState.NODE_FAIL,
                                                 JobState.CANCELLED) else JobState.FAILED
            return self._failure(worker, special, code, f"worker exited with code {code}")
        if not job.seen and not job.vanished:
            return WorkerJobStatus(JobState.UNKNOWN, None, f"Slurm job {job.job_id} is not listed by squeue yet")
        if job_state is JobState.PENDING:
            return WorkerJobStatus(JobState.PENDING, None, f"Slurm job {job.job_id} pending: {job.reason}")
        if job_state is JobState.RUNNING:
            return WorkerJobStatus(JobState.RUNNING, None, f"Slurm job {job.job_id}")
        if job_state is JobState.SUSPENDED:
            return WorkerJobStatus(JobState.SUSPENDED, None, f"Slurm job {job.job_id} {job.slurm_state}")
        if job_state is JobState.UNKNOWN:
            return WorkerJobStatus(JobState.UNKNOWN, None, f"Slurm job {job.job_id} in state {job.slurm_state}")
        if job.slurm_state.startswith("PREEMPTED") and not job.requeue_checked and self._check_requeued(job):
            return WorkerJobStatus(JobState.PENDING, None, f"Slurm job {job.job_id} was preempted and requeued")
        exit_code = self._job_exit_code(job)
        if job_state is JobState.COMPLETED:
            return self._failure(worker, JobState.FAILED, exit_code,
                                 "the job ended without recording this worker's exit code")
        what = "squeue no longer lists the job" if job.vanished else f"the job ended as {job.slurm_state}"
        return self._failure(worker, job_state, exit_code, what)

    def poll(self) -> dict[str, WorkerJobStatus]:
        self._refresh()
        return {worker_id: dataclasses.replace(self._worker_status(worker), requeues=worker.job.requeues)
                for worker_id, worker in self._workers.items()}

    # --- stopping -----------------------------------------------------------------------------------------------

    def _steps(self, job: _Job) -> dict[str, tuple[str, str]]:
        """The job's steps squeue lists: step name -> (step id, node list)."""
        output = run(["squeue", "-h", "-s", "-j", job.job_id, "-o", "%i|%N|%j"], "stop",
                      ok_errors=("Invalid job id",))
        steps: dict[str, tuple[str, str]] = {}
        for line in output.splitlines():
            step_id, nodes, name = (line.split("|", 2) + ["", ""])[:3]
            steps[name.strip()] = (step_id.strip(), nodes.strip())
        return steps

    # --- nodes that stopped answering ---------------------------------------------------------------------------

    def _nodes_of(self, nodelist: str) -> set[str]:
        """Host names of a Slurm node list such as n[1-3] (scontrol show hostnames)."""
        if nodelist not in self._hostnames:
            try:
                self._hostnames[nodelist] = set(run(["scontrol", "show", "hostnames", nodelist],
                                                     "expand a node list").split())
            except SlurmError as error:
                log.warning("%s", error)
                return {nodelist}
        return self._hostnames[nodelist]

    def _on_lost_node(self, job: _Job) -> bool:
        return bool(self._unreachable and job.nodes and self._nodes_of(job.nodes) & self._unreachable)

    def _worker_on_lost_node(self, worker: _Worker) -> bool:
        """The worker's step runs on a node that stopped answering (all of its job's nodes, when its step is not
        listed)."""
        if not self._on_lost_node(worker.job):
            return False
        if not worker.node:
            try:
                worker.node = self._steps(worker.job).get(step_name(worker.launch), ("", ""))[1]
            except SlurmError as error:
                log.warning("%s", error)
        nodes = self._nodes_of(worker.node or worker.job.nodes)
        if nodes <= self._unreachable:
            worker.node = worker.node or worker.job.nodes
            return True
        return False

    def _take_as_unreachable(self, jobs: list[_Job], workers: list[_Worker], waited_s: float) -> bool:
        """SIGKILLed steps of `jobs` and `workers` did not end: their nodes no longer answer slurmctld (cut off,
        powered off). Take those nodes for unreachable and stop waiting for anything on them; False when squeue
        names no node to blame."""
        nodes: set[str] = set()
        for job in {id(job): job for job in [*jobs, *(worker.job for worker in workers)]}.values():
            step_nodes = [listed for _, listed in self._steps(job).values() if listed]
            for listed in step_nodes or ([job.nodes] if job.nodes else []):
                nodes |= self._nodes_of(listed)
        if not nodes:
            return False
        new = sorted(nodes - self._unreachable)
        self._unreachable |= nodes
        if new:
            names = sorted({*(w for job in jobs for w in job.launches), *(w.launch.worker_id for w in workers)})
            log.warning("Slurm node %s did not end the SIGKILLed steps of workers %s within %.0f s: it no longer "
                        "answers (cut off or down); its jobs stay cancelled and nothing waits for them any more "
                        "(Slurm marks them NODE_FAIL once it declares the node down)", ", ".join(new),
                        ", ".join(names), waited_s)
        return True

    def stop(self, worker_ids: list[str] | None = None, timeout: float = 10.0) -> None:
        """scancel whole jobs, or the steps of some workers of a job; SIGKILL what is left after `timeout`.

        `timeout=0` sends SIGKILL at once (a hung worker acts on nothing else); either way `stop` returns once
        Slurm shows the jobs and steps ended, or raises SlurmError. Steps that SIGKILL does not end within
        _KILL_WAIT_S mark their node as no longer answering: it is said once, and nothing on it is waited for again.
        """
        unknown = sorted(set(worker_ids or ()) - set(self._workers))
        if unknown:
            raise ValueError(f"cannot stop unknown workers {unknown}; known: {sorted(self._workers)}")
        targets = set(self._workers) if worker_ids is None else set(worker_ids)
        self._refresh(force=True)
        for worker_id in targets:
            worker = self._workers[worker_id]
            # A worker that already ended keeps its own outcome (a failure stays a failure).
            worker.stopped = worker.stopped or not self._worker_finished(worker)
        whole_jobs: list[_Job] = []
        partial: list[_Worker] = []
        for job in self._jobs.values():
            if not job.alive:
                continue
            current = {wid for wid in job.launches if self._workers[wid].job is job}
            if worker_ids is None or current <= targets:
                whole_jobs.append(job)
            else:
                partial += [self._workers[wid] for wid in sorted(current & targets)
                            if self._read_exit_code(self._workers[wid]) is None]
        for worker in partial:
            # The step may not exist yet (job pending, or srun not yet started): the marker keeps it from starting.
            stop_file(self.state_dir, worker.launch, worker.job.job_id).touch()
        cancelled: set[str] = set()
        if timeout > 0:
            # A node that stopped answering acts on no signal; its jobs get SIGKILL below and are not waited for.
            reachable = [job for job in whole_jobs if not self._on_lost_node(job)]
            if reachable:
                run(["scancel", *(job.job_id for job in reachable)], "stop", ok_errors=_GONE_ERRORS)
            left_jobs, left = self._wait_stopped(reachable, partial, cancelled, timeout, kill=False)
            if not left_jobs and not left and len(reachable) == len(whole_jobs):
                return
            if left_jobs or left:
                log.warning("Slurm jobs %s / steps %s still alive %.0f s after scancel; sending SIGKILL",
                            [job.job_id for job in left_jobs], sorted(cancelled), timeout)
        if whole_jobs:
            run(["scancel", "--signal=KILL", "--full", *(job.job_id for job in whole_jobs)], "stop",
                 ok_errors=_GONE_ERRORS)
        cancelled.clear()
        # Slurm shows a job it is killing as RUNNING or COMPLETING for a while, even when no grace was asked for.
        kill_wait = max(timeout, _KILL_WAIT_S)
        left_jobs, left = self._wait_stopped(whole_jobs, partial, cancelled, kill_wait, kill=True)
        if (left_jobs or left) and not self._take_as_unreachable(left_jobs, left, kill_wait):
            raise SlurmError(f"Slurm jobs {[job.job_id for job in left_jobs]} or steps {sorted(cancelled)} are "
                             f"still alive {kill_wait:.0f} s after scancel --signal=KILL; check the node with "
                             "`squeue -t all` and `scontrol show job`")

    def dump_stacks(self, worker_ids: list[str]) -> None:
        for worker_id in worker_ids:
            worker = self._workers.get(worker_id)
            if worker is None or not worker.job.alive:
                continue
            try:
                step = self._steps(worker.job).get(step_name(worker.launch), ("", ""))[0]
                if step:
                    run(["scancel", "--signal=USR1", step], "signal", ok_errors=_GONE_ERRORS)
            except SlurmError as error:
                log.warning("cannot ask worker %s for its stacks: %s", worker_id, error)

    def _wait_stopped(self, jobs: list[_Job], workers: list[_Worker], cancelled: set[str], timeout: float,
                      kill: bool) -> tuple[list[_Job], list[_Worker]]:
        """Wait until `jobs` have ended and `workers` have exit records, cancelling their steps as they appear;
        returns the jobs and workers still alive at `timeout` (none: all stopped). Nothing on a node that stopped
        answering is waited for."""
        deadline = time.monotonic() + timeout
        while True:
            self._refresh(force=True)
            left_jobs = [job for job in jobs if job.alive and not self._on_lost_node(job)]
            running = [worker for worker in workers if worker.job.alive and worker.job.state is not JobState.PENDING
                       and self._read_exit_code(worker) is None]
            left = [worker for worker in running if not self._worker_on_lost_node(worker)]
            for job in {id(worker.job): worker.job for worker in running}.values():
                by_name = {name: step_id for name, (step_id, _) in self._steps(job).items()}
                new = [by_name[step_name(worker.launch)] for worker in running if worker.job is job
                       and by_name.get(step_name(worker.launch), "") not in cancelled | {""}]
                if new:
                    run(["scancel", *(["--signal=KILL"] if kill else []), *new], "stop", ok_errors=_GONE_ERRORS)
                    cancelled.update(new)
            if (not left_jobs and not left) or time.monotonic() >= deadline:
                return left_jobs, left
            time.sleep(0.2)


def _show_job(job_id: str) -> str:
    """`scontrol show job -o` of one job, or '' (with a warning) when scontrol fails."""
    try:
        return run(["scontrol", "show", "job", "-o", job_id], "poll")
    except SlurmError as error:
        log.warning("%s", error)
        return ""
