"""The launch plan: where a run lives and the exact command, environment and log file of every worker."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from zrl.config import NAME_RESOLVE_ENV, NAME_RESOLVE_PASSWORD_ENV, ExperimentConfig
from zrl.controller.overrides import ConfigError
from zrl.controller.schedulers import WorkerLaunch
from zrl.streams.control_key_file import CONTROL_KEY_FILE_ENV, control_key_path


@dataclass(frozen=True)
class RunPaths:
    """Files of one run, all under `runs/{experiment}/{trial}/`."""

    root: Path

    @classmethod
    def for_config(cls, config: ExperimentConfig) -> RunPaths:
        return cls(Path(config.run_root) / config.experiment / config.trial)

    def create(self) -> Path:
        """Create the run directory (it holds the control key and logs), private to its owner: mode 0700."""
        return make_private_dir(self.root)

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def control_key(self) -> Path:
        """The trial's control key (mode 0600), which the workers read at start."""
        return control_key_path(self.root)

    @property
    def names(self) -> Path:
        return self.root / "names"

    def log(self, group: str, index: int) -> Path:
        return self.root / "logs" / f"{group}-{index}.log"


def make_private_dir(path: Path) -> Path:
    """Create `path` and its missing parents, `path` itself with mode 0700 (narrowed to 0700 if it exists)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def with_name_service_password(config: ExperimentConfig, environ: Mapping[str, str]) -> ExperimentConfig:
    """`config` with the name service's password put into its URL when the URL holds none: the first line of
    `name_resolve_password_file`, else $ZRL_NAME_RESOLVE_PASSWORD. Raises ConfigError when the file is unreadable."""
    parts = urlsplit(config.name_resolve)
    if not config.name_resolve or parts.password is not None:
        return config
    password = environ.get(NAME_RESOLVE_PASSWORD_ENV, "")
    if config.name_resolve_password_file:
        try:
            password = (Path(config.name_resolve_password_file).read_text().splitlines() or [""])[0]
        except OSError as exc:
            raise ConfigError([f"name_resolve_password_file: cannot read {config.name_resolve_password_file}: "
                               f"{exc.strerror}"]) from None
    if not password:
        return config
    user = quote(parts.username or "", safe="")
    netloc = f"{user}:{quote(password, safe='')}@{parts.netloc.rsplit('@', 1)[-1]}"
    return dataclasses.replace(config, name_resolve=urlunsplit(parts._replace(netloc=netloc)))


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
            "--exit-grace", f"{config.timeouts.exit_grace_s:g}", "--curve", config.security.curve,
            "--group-size", str(spec.count), "--run-dir", str(paths.root.resolve()))
    return WorkerLaunch(group=group, index=index, argv=argv,
                        env={"PYTHONUNBUFFERED": "1", NAME_RESOLVE_ENV: name_resolve_url(config, paths),
                             CONTROL_KEY_FILE_ENV: str(paths.control_key.resolve())},
                        log_path=paths.log(group, index), resources=spec.resources, slurm=spec.slurm,
                        ray=spec.ray)


def launch_plan(config: ExperimentConfig, paths: RunPaths) -> list[WorkerLaunch]:
    """One launch per worker, group by group in the experiment's order."""
    return [worker_launch(config, paths, group, index)
            for group, spec in config.workers.items() for index in range(spec.count)]
