"""The scheduler interface: how the controller starts, watches and stops worker processes.

Implementations: `local` (one subprocess per worker), `slurm` (one sbatch job per worker group) and `ray` (one
Ray actor per worker, which runs the worker's process on its node). The controller
builds a `WorkerLaunch` for every worker (the exact argv, the explicit environment, the log file and the resources)
and never imports a worker implementation; a scheduler only runs those commands somewhere and reports their state.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from pathlib import Path

from zrl.config import RayOptions, RayPlacement, Resources, SlurmOptions, SlurmPlacement

__all__ = ["JobState", "RayOptions", "RayPlacement", "Resources", "Scheduler", "SlurmOptions", "SlurmPlacement",
           "WorkerJobStatus", "WorkerLaunch"]


@dataclass(frozen=True)
class WorkerLaunch:
    group: str
    """Worker group name from the experiment (e.g. `rollout`)."""
    index: int
    """Index of the worker within its group."""
    argv: tuple[str, ...]
    """The exact command that runs the worker."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment the worker needs (name service URL, experiment, trial, ...), passed explicitly."""
    log_path: Path = Path("worker.log")
    """File that receives the worker's stdout and stderr."""
    resources: Resources = field(default_factory=Resources)
    slurm: SlurmPlacement = field(default_factory=SlurmPlacement)
    """Where a Slurm cluster may place its group's job (the other schedulers ignore it)."""
    ray: RayPlacement = field(default_factory=RayPlacement)
    """Where a Ray cluster may place its group's workers (the other schedulers ignore it)."""

    @property
    def worker_id(self) -> str:
        return f"{self.group}/{self.index}"


class JobState(enum.Enum):
    """What the scheduler knows about a worker's process, independent of the worker's own status."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    """Held by the scheduler (Slurm suspend, a gang-scheduled time slice): its processes exist but cannot run."""
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    UNKNOWN = "UNKNOWN"

    @property
    def finished(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING, JobState.SUSPENDED, JobState.UNKNOWN)


@dataclass(frozen=True)
class WorkerJobStatus:
    state: JobState
    exit_code: int | None = None
    detail: str = ""
    """Free text from the scheduler, e.g. Slurm's Reason or 'killed by signal 9'."""
    requeues: int = 0
    """How often the scheduler itself restarted the worker's process (a requeued Slurm job): each time it starts
    afresh and registers again, without a new submission."""


class Scheduler(abc.ABC):
    @abc.abstractmethod
    def submit(self, launches: list[WorkerLaunch]) -> None:
        """Start the given workers (whole groups, or one worker being relaunched). Returns once they are submitted."""

    @abc.abstractmethod
    def poll(self) -> dict[str, WorkerJobStatus]:
        """The state of every submitted worker, keyed by `WorkerLaunch.worker_id`."""

    @abc.abstractmethod
    def stop(self, worker_ids: list[str] | None = None, timeout: float = 10.0) -> None:
        """Stop the given workers (all when None): terminate, then kill whatever is left after `timeout`."""

    @abc.abstractmethod
    def dump_stacks(self, worker_ids: list[str]) -> None:
        """Ask running workers to write the stacks of all their threads into their logs (SIGUSR1); best effort."""

    def describe(self, launches: list[WorkerLaunch]) -> str:
        """What `submit` would do, for `--dry-run`: commands or job scripts, without starting anything."""
        return "\n".join(" ".join(launch.argv) for launch in launches)
