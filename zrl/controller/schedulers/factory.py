"""`make_scheduler(name, ...)`: the scheduler chosen by the experiment's `scheduler` key, imported lazily."""

from __future__ import annotations

from pathlib import Path

from zrl.config import RayOptions, SlurmOptions
from zrl.controller.schedulers.base import Scheduler

SCHEDULERS = ("local", "slurm", "ray")


def make_scheduler(name: str, run_dir: Path, slurm: SlurmOptions | None = None,
                   ray: RayOptions | None = None) -> Scheduler:
    """Build the `local`, `slurm` or `ray` scheduler for a run whose files live in `run_dir`."""
    if name == "local":
        from zrl.controller.schedulers.local import LocalScheduler
        return LocalScheduler()
    if name == "slurm":
        from zrl.controller.schedulers.slurm import SlurmScheduler
        return SlurmScheduler(slurm or SlurmOptions(), run_dir)
    if name == "ray":
        from zrl.controller.schedulers.ray_cluster import RayScheduler
        return RayScheduler(ray or RayOptions(), run_dir)
    raise ValueError(f"unknown scheduler {name!r}; allowed: {', '.join(SCHEDULERS)}")
