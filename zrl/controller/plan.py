"""The launch plan: where a run lives and the exact command, environment and log file of every worker."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from zrl.config import NAME_RESOLVE_ENV, ExperimentConfig
from zrl.controller.scheduler import WorkerLaunch


@dataclass(frozen=True)
class RunPaths:
    """Files of one run, all under `runs/{experiment}/{trial}/`."""

    root: Path

    @classmethod
    def for_config(cls, config: ExperimentConfig) -> RunPaths:
        return cls(Path(config.run_root) / config.experiment / config.trial)

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def names(self) -> Path:
        return self.root / "names"

    def log(self, group: str, index: int) -> Path:
        return self.root / "logs" / f"{group}-{index}.log"


def name_resolve_url(config: ExperimentConfig, paths: RunPaths) -> str:
    """The configured name service, or by default a file service in the run directory (no server needed)."""
    return config.name_resolve or f"file://{paths.names.resolve()}"


def worker_launch(config: ExperimentConfig, paths: RunPaths, group: str, index: int) -> WorkerLaunch:
    spec = config.workers[group]
    argv = (sys.executable, "-m", "zrl.workers", spec.type, "--experiment", config.experiment,
            "--trial", config.trial, "--group", group, "--index", str(index),
            "--host", config.worker_host,
            "--keepalive-ttl", f"{config.timeouts.keepalive_ttl_s:g}",
            "--controller-lease", f"{config.timeouts.controller_lease_s:g}",
            "--exit-grace", f"{config.timeouts.exit_grace_s:g}",
            "--group-size", str(spec.count), "--run-dir", str(paths.root.resolve()))
    return WorkerLaunch(group=group, index=index, argv=argv,
                        env={"PYTHONUNBUFFERED": "1", NAME_RESOLVE_ENV: name_resolve_url(config, paths)},
                        log_path=paths.log(group, index), resources=spec.resources)


def launch_plan(config: ExperimentConfig, paths: RunPaths) -> list[WorkerLaunch]:
    """One launch per worker, group by group in the experiment's order."""
    return [worker_launch(config, paths, group, index)
            for group, spec in config.workers.items() for index in range(spec.count)]
