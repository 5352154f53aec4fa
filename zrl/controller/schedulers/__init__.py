"""The schedulers: how the controller starts, watches and stops worker processes.

`base.py` holds the interface (`Scheduler`, `WorkerLaunch`, `JobState`, `WorkerJobStatus`), `factory.py`
`make_scheduler`, `processes.py` what the process-running schedulers share, `local.py` the local scheduler,
`slurm.py` the Slurm scheduler, `sbatch.py` its job scripts, `slurm_commands.py` the Slurm client calls,
`ray_cluster.py` the Ray scheduler and `ray_host.py` its actor on each node. Importing this package loads only the interface and the factory; the
schedulers themselves are imported on first use, as `make_scheduler` does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from zrl.controller.schedulers.base import (
    JobState,
    Resources,
    Scheduler,
    SlurmOptions,
    SlurmPlacement,
    WorkerJobStatus,
    WorkerLaunch,
)
from zrl.controller.schedulers.factory import SCHEDULERS, make_scheduler

if TYPE_CHECKING:
    from zrl.controller.schedulers.local import LocalScheduler
    from zrl.controller.schedulers.ray_cluster import RayScheduler
    from zrl.controller.schedulers.slurm import SlurmScheduler
    from zrl.controller.schedulers.slurm_commands import SlurmError

_LAZY = {
    "LocalScheduler": "zrl.controller.schedulers.local",
    "SlurmScheduler": "zrl.controller.schedulers.slurm",
    "SlurmError": "zrl.controller.schedulers.slurm_commands",
    "RayScheduler": "zrl.controller.schedulers.ray_cluster",
}

__all__ = ["SCHEDULERS", "JobState", "LocalScheduler", "RayScheduler", "Resources", "Scheduler", "SlurmError", "SlurmOptions",
           "SlurmPlacement", "SlurmScheduler", "WorkerJobStatus", "WorkerLaunch", "make_scheduler"]


def __getattr__(name: str) -> Any:
    """The schedulers themselves, imported when first asked for."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
