"""The `ray` scheduler: every worker is a process owned by a Ray actor (`ray_host.WorkerHost`) on a node of a Ray
cluster, with the group's CPUs, GPUs and memory, placed by the group's `RayPlacement`.

Ray only places and watches processes: the workers talk over zrl's streams and find each other in zrl's name
service. The controller is the actors' owner (they are not detached), so Ray ends them when the controller dies;
a worker dies with its actor, and the controller lease ends any worker that does not.

State: an actor that has not started its worker is PENDING (Ray has no node with the resources, or is still
starting it); then the worker's exit code decides, as with the local scheduler. An actor that dies is NODE_FAIL
when its node died, OUT_OF_MEMORY when Ray killed it for memory, FAILED otherwise, with Ray's reason in `detail`.
"""

from __future__ import annotations

import logging
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zrl.config import RayOptions, RayPlacement
from zrl.controller.schedulers.base import JobState, Scheduler, WorkerJobStatus, WorkerLaunch
from zrl.controller.schedulers.processes import exit_status, write_private
from zrl.controller.schedulers.ray_host import WorkerHost, launch_spec
from zrl.controller.schedulers.ray_options import address_host_port, ray_option_errors, ray_placement_errors
from zrl.controller.schedulers.sbatch import safe_name, step_name
from zrl.redact import redact_text

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 10.0
_CALL_TIMEOUT_S = 5.0
_RESOURCE_SHARE = 0.001
"""What each worker takes of a placement's custom resource: a marker of where it may run, not a count."""


class RayUnavailable(RuntimeError):
    """The Ray cluster cannot be reached, or Ray is not installed."""


def connect(options: RayOptions) -> None:
    """Join the Ray cluster as its driver (once per process); raise RayUnavailable saying what to do."""
    try:
        import ray
    except ImportError as error:
        raise RayUnavailable("scheduler=ray needs Ray: pip install 'zrl[ray]'") from error
    if ray.is_initialized():
        return
    problems = ray_option_errors(options)
    if problems:
        raise RayUnavailable("bad ray options: " + "; ".join(problems))
    where = f"ray.address={options.address}"
    if options.address != "auto":
        host, port = address_host_port(options.address)
        try:
            socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S).close()
        except OSError as error:
            raise RayUnavailable(f"cannot reach the Ray cluster at {where}: {error}. Is its head up (`ray start "
                                 "--head`), and is this its address?") from error
    try:
        ray.init(address=options.address, namespace=options.namespace, log_to_driver=False,
                 logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise RayUnavailable(f"cannot join the Ray cluster at {where}: {error}. Start one with `ray start --head`, "
                             "or give its head as ray.address=host:port (ray://host:port from outside it)") from error


@dataclass
class _RayWorker:
    launch: WorkerLaunch
    actor: Any
    started: Any
    """The ObjectRef of the actor's start(): pending until Ray placed the actor and it started the worker."""
    info: dict[str, Any] | None = None
    status: WorkerJobStatus = WorkerJobStatus(JobState.PENDING)
    stopped: bool = False


class RayScheduler(Scheduler):
    """Runs every worker as a process owned by a Ray actor; launch files live in `{run_dir}/ray/`."""

    def __init__(self, options: RayOptions, run_dir: Path, *, cwd: Path | None = None):
        problems = ray_option_errors(options)
        if problems:
            raise ValueError("bad ray options: " + "; ".join(problems))
        self.options = options
        self.cwd = (cwd or Path.cwd()).resolve()
        self.run_dir = (self.cwd / run_dir).resolve()
        self.state_dir = self.run_dir / "ray"
        self._workers: dict[str, _RayWorker] = {}
        self._placement_groups: dict[str, Any] = {}
        self._last_poll = -float("inf")

    # --- submitting ---------------------------------------------------------------------------------------------

    def describe(self, launches: list[WorkerLaunch]) -> str:
        lines = [f"# Ray cluster ray.address={self.options.address}, namespace {self.options.namespace}; each "
                 f"worker runs as a process of a WorkerHost actor, its launch file in {self.state_dir}"]
        for launch in launches:
            res = launch.resources
            lines.append(f"{launch.worker_id}: {' '.join(launch.argv)}  > {launch.log_path}  [num_cpus={res.cpus} "
                         f"num_gpus={res.gpus} memory={res.memory_mb} MiB{_placement_text(launch.ray)}]")
        return redact_text("\n".join(lines))

    def submit(self, launches: list[WorkerLaunch]) -> None:
        for launch in launches:
            problems = ray_placement_errors(launch.ray)
            if problems:
                raise ValueError(f"worker {launch.worker_id}: ray placement: {'; '.join(problems)}")
            current = self._workers.get(launch.worker_id)
            if current is not None and not current.stopped and not current.status.state.finished:
                raise ValueError(f"worker {launch.worker_id} is still running in Ray; stop it before relaunching it")
        connect(self.options)
        import ray

        self.state_dir.mkdir(parents=True, exist_ok=True)
        host_class = ray.remote(WorkerHost)
        for launch in launches:
            launch_file = self.state_dir / f"{step_name(launch)}.json"
            write_private(launch_file, launch_spec(launch.argv, launch.env, (self.cwd / launch.log_path).resolve(),
                                                   self.cwd))
            res = launch.resources
            options: dict[str, Any] = {"num_cpus": res.cpus, "num_gpus": res.gpus, "memory": res.memory_mb * 2**20,
                                       "max_restarts": 0, "max_concurrency": 1,
                                       # Unique: an earlier actor of the same worker (a relaunch, a resumed
                                       # trial) may still be on its way out.
                                       "name": f"zrl-{safe_name(self.run_dir.name)}-{step_name(launch)}-"
                                               f"{secrets.token_hex(3)}"}
            options.update(self._placement_options(launch, launches))
            actor = host_class.options(**options).remote(str(launch_file))
            waiting = WorkerJobStatus(JobState.PENDING, detail=f"waiting for Ray to place its actor: num_cpus={res.cpus} "
                                      f"num_gpus={res.gpus} memory={res.memory_mb} MiB{_placement_text(launch.ray)}")
            self._workers[launch.worker_id] = _RayWorker(launch, actor, actor.start.remote(), status=waiting)
            log.info("submitted %s to Ray (%s)", launch.worker_id, _placement_text(launch.ray) or "default placement")
        self._last_poll = -float("inf")

    def _placement_options(self, launch: WorkerLaunch, launches: list[WorkerLaunch]) -> dict[str, Any]:
        from ray.util.scheduling_strategies import (
            NodeAffinitySchedulingStrategy,
            PlacementGroupSchedulingStrategy,
        )

        placement = launch.ray
        options: dict[str, Any] = {}
        if placement.resource:
            options["resources"] = {placement.resource: _RESOURCE_SHARE}
        if placement.labels:
            options["label_selector"] = dict(label.split("=", 1) for label in placement.labels)
        if placement.node_id:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(placement.node_id, soft=False)
        elif placement.strategy:
            group = self._placement_group(launch.group, placement, [la for la in launches if la.group == launch.group])
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=launch.index)
        return options

    def _placement_group(self, group_name: str, placement: RayPlacement, members: list[WorkerLaunch]) -> Any:
        """The group's placement group: one bundle per worker, by index; made when the group is first submitted,
        kept for its relaunches."""
        if group_name in self._placement_groups:
            return self._placement_groups[group_name]
        from ray.util.placement_group import placement_group

        members = sorted(members, key=lambda item: item.index)
        if [launch.index for launch in members] != list(range(len(members))):
            raise ValueError(f"group {group_name}: its placement group is made when the whole group is submitted")
        bundles = []
        for launch in members:
            res = launch.resources
            bundle = {"CPU": float(res.cpus), "memory": float(res.memory_mb * 2**20)}
            if res.gpus:
                bundle["GPU"] = float(res.gpus)
            if placement.resource:
                bundle[placement.resource] = _RESOURCE_SHARE
            bundles.append(bundle)
        made = placement_group(bundles, strategy=placement.strategy.upper(),
                               name=f"zrl-{safe_name(self.run_dir.name)}-{safe_name(group_name)}")
        self._placement_groups[group_name] = made
        return made

    # --- polling ------------------------------------------------------------------------------------------------

    def poll(self) -> dict[str, WorkerJobStatus]:
        if time.monotonic() - self._last_poll >= self.options.poll_interval_s:
            self._refresh()
            self._last_poll = time.monotonic()
        return {worker_id: worker.status for worker_id, worker in self._workers.items()}

    def _refresh(self) -> None:
        import ray

        live = [worker for worker in self._workers.values() if not worker.status.state.finished]
        starting = [worker for worker in live if worker.info is None]
        if starting:
            ready, _ = ray.wait([worker.started for worker in starting], num_returns=len(starting), timeout=0)
            for worker in starting:
                if worker.started in ready:
                    self._note_started(worker)
        running = [worker for worker in live if worker.info is not None and not worker.status.state.finished]
        if not running:
            return
        calls = {worker.actor.exit_code.remote(): worker for worker in running}
        ready, _ = ray.wait(list(calls), num_returns=len(calls), timeout=_CALL_TIMEOUT_S)
        for ref in ready:
            worker = calls[ref]
            try:
                worker.status = exit_status(ray.get(ref), worker.stopped)
            except ray.exceptions.ActorUnavailableError:
                pass  # its node does not answer now; Ray declares the actor dead once it declares the node dead
            except ray.exceptions.RayActorError as error:
                worker.status = _actor_died_status(error, worker.stopped)
        # An actor that did not answer in time keeps its last state: Ray reports a lost node as the actor's death.

    def _note_started(self, worker: _RayWorker) -> None:
        import ray

        try:
            worker.info = ray.get(worker.started)
        except ray.exceptions.RayActorError as error:
            worker.status = _actor_died_status(error, worker.stopped)
        except ray.exceptions.RayTaskError as error:
            worker.status = WorkerJobStatus(JobState.FAILED, None, f"the Ray actor could not start the worker: "
                                                                   f"{_first_line(error)}")
        else:
            worker.status = WorkerJobStatus(JobState.RUNNING, detail=f"pid {worker.info['pid']} on "
                                                                     f"{worker.info['host']}")
            log.info("%s runs as pid %s on %s (Ray node %s)", worker.launch.worker_id, worker.info["pid"],
                     worker.info["host"], worker.info["node_id"])

    def nodes(self) -> dict[str, str]:
        """The Ray node id each started worker runs on, keyed by worker id."""
        return {worker_id: worker.info["node_id"] for worker_id, worker in self._workers.items() if worker.info}

    def pids(self) -> dict[str, int]:
        """The pid of each started worker's process (on its own node)."""
        return {worker_id: worker.info["pid"] for worker_id, worker in self._workers.items() if worker.info}

    # --- stopping -----------------------------------------------------------------------------------------------

    def stop(self, worker_ids: list[str] | None = None, timeout: float = 10.0) -> None:
        import ray

        targets = [worker for worker_id, worker in self._workers.items() if worker_ids is None or worker_id in worker_ids]
        for worker in targets:
            worker.stopped = True
        calls = {worker.actor.stop.remote(timeout): worker for worker in targets if worker.info is not None
                 and not worker.status.state.finished}
        ready, _ = ray.wait(list(calls), num_returns=len(calls), timeout=timeout + _CALL_TIMEOUT_S) if calls else ([], [])
        for ref in ready:
            try:
                calls[ref].status = exit_status(ray.get(ref), stopped=True)
            except ray.exceptions.RayActorError as error:
                calls[ref].status = _actor_died_status(error, stopped=True)
        for worker in targets:
            ray.kill(worker.actor, no_restart=True)  # a worker still alive dies with its actor
            if not worker.status.state.finished:
                worker.status = WorkerJobStatus(JobState.CANCELLED, None, "stopped by the controller")
        if worker_ids is None:
            from ray.util.placement_group import remove_placement_group

            for group in self._placement_groups.values():
                remove_placement_group(group)
            self._placement_groups.clear()

    def dump_stacks(self, worker_ids: list[str]) -> None:
        import signal

        for worker_id in worker_ids:
            worker = self._workers.get(worker_id)
            if worker is not None and worker.info is not None and not worker.status.state.finished:
                worker.actor.send_signal.remote(int(signal.SIGUSR1))


def _actor_died_status(error: Exception, stopped: bool) -> WorkerJobStatus:
    """The job status of a worker whose actor died: Ray's reason, mapped to a lost node or memory where it says so."""
    reason = " ".join(str(getattr(error, "error_msg", "") or error).split())
    text = reason.lower()
    if stopped:
        state = JobState.CANCELLED
    elif "node" in text and ("died" in text or "dead" in text):
        state = JobState.NODE_FAIL
    elif "memory" in text:
        state = JobState.OUT_OF_MEMORY
    else:
        state = JobState.FAILED
    return WorkerJobStatus(state, None, f"Ray actor died: {reason[:500]}")


def _first_line(error: Exception) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def _placement_text(placement: RayPlacement) -> str:
    parts = [f"{name}={value}" for name, value in (
        ("node_id", placement.node_id), ("labels", ",".join(placement.labels)), ("resource", placement.resource),
        ("strategy", placement.strategy)) if value]
    return (" " + " ".join(parts)) if parts else ""

