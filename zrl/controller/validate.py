"""Complete and check a whole experiment config before anything is launched; every problem is reported at once."""

from __future__ import annotations

import dataclasses
import math
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from zrl.config import ExperimentConfig
from zrl.controller.overrides import ConfigError, key_exists
from zrl.controller.schedulers.ray_options import ray_option_errors, ray_placement_errors
from zrl.controller.schedulers.sbatch import placement_errors
from zrl.hosts import unreachable_host_reason
from zrl.nameresolve import SUPPORTED_SCHEMES, names
from zrl.streams.curve import require_curve
from zrl.workers.registry import UnknownWorkerTypeError, config_class
from zrl.workers.treepo_config import staleness_disagreements


def complete(config: ExperimentConfig, clock: Callable[[], float] = time.time,
             name_trial: bool = True) -> ExperimentConfig:
    """Fill what an experiment may leave empty: the trial (a timestamp; not with `name_trial=False` or with
    resume=auto, which continues a trial by its name) and each group's config (its defaults)."""
    trial = config.trial
    if not trial and name_trial and config.resume != "auto":
        # A random suffix: two runs started in the same second must not share a trial (and its names).
        trial = f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(clock()))}-{secrets.token_hex(3)}"
    workers = {}
    for name, group in config.workers.items():
        if group.config is None:
            try:
                group = dataclasses.replace(group, config=config_class(group.type)())
            except UnknownWorkerTypeError:
                pass  # reported by validate, with the group's key
        workers[name] = group
    return dataclasses.replace(config, trial=trial, workers=workers)


def validate(config: ExperimentConfig) -> None:
    """Raise ConfigError listing every problem of `config`, each naming its key."""
    errors: list[str] = []
    try:
        names.trial_root(config.experiment or "", config.trial or "x")
    except (TypeError, ValueError) as exc:
        errors.append(f"experiment: {exc}")
    if config.resume == "auto" and not config.trial:
        errors.append("resume: resume=auto continues an existing trial; name it with trial=NAME (its run directory "
                      f"is {config.run_root}/{config.experiment}/NAME)")
    else:
        try:
            names.trial_root("x", config.trial or "")
        except (TypeError, ValueError) as exc:
            errors.append(f"trial: {exc}")
        else:
            run_dir = Path(config.run_root) / config.experiment / config.trial
            if config.resume == "auto" and not run_dir.is_dir():
                errors.append(f"resume: there is no run directory {run_dir} to resume (trial={config.trial}, "
                              f"run_root={config.run_root})")
    if config.name_resolve:
        scheme = config.name_resolve.split("://", 1)[0] if "://" in config.name_resolve else ""
        if scheme == "memory" and config.scheduler in ("slurm", "ray"):
            errors.append(f"name_resolve: memory:// lives inside one process, but scheduler={config.scheduler} runs every worker "
                          "as its own process, possibly on another node; use file:///dir on a filesystem that all "
                          "nodes share, or redis://host:port/db")
        elif scheme not in SUPPORTED_SCHEMES or scheme == "memory":
            errors.append(f"name_resolve: {config.name_resolve.split('@')[-1]!r} is not a URL that worker processes "
                          "can share; use file:///dir or redis://host:port/db")
    errors += [f"ray.{problem}" for problem in ray_option_errors(config.ray)]
    if config.name_resolve_password_file and not config.name_resolve.lower().startswith(("redis://", "rediss://")):
        errors.append("name_resolve_password_file: only a redis:// or rediss:// name_resolve takes a password")
    refusal = unreachable_host_reason(config.worker_host)
    if refusal is not None:
        errors.append(f"worker_host: {refusal}")
    if not config.workers:
        errors.append("workers: an experiment needs at least one worker group")
    for name in config.workers:
        errors += _group_errors(config, name)
    errors += staleness_disagreements(config.workers)
    for i, group_name in enumerate(config.done_when):
        if group_name not in config.workers:
            errors.append(f"done_when[{i}]: {group_name!r} is not a worker group; groups: "
                          f"{', '.join(config.workers)}")
    for field in dataclasses.fields(config.timeouts):
        value = getattr(config.timeouts, field.name)
        if not math.isfinite(value):
            errors.append(f"timeouts.{field.name}: must be a finite number of seconds, got {value}")
        elif value < 0 or (value == 0 and field.name not in ("max_run_s", "poll_stall_s")):
            errors.append(f"timeouts.{field.name}: must be > 0, got {value}")
    for alias, targets in config.aliases.items():
        for target in targets:
            if not key_exists(config, target):
                errors.append(f"aliases.{alias}: {target!r} is not a key of this experiment")
    if config.security.curve == "on":
        try:
            require_curve()
        except RuntimeError as exc:
            errors.append(f"security.curve: {exc}")
    if not config.progress_interval_s >= 0 or not math.isfinite(config.progress_interval_s):
        errors.append(f"progress_interval_s: must be a finite number >= 0, got {config.progress_interval_s}")
    if not any(".after[" in error for error in errors):
        try:
            group_levels(config)
        except ValueError as exc:
            errors.append(str(exc))
    if errors:
        raise ConfigError(errors)


def _group_errors(config: ExperimentConfig, name: str) -> list[str]:
    group = config.workers[name]
    key = f"workers.{name}"
    errors = []
    try:
        names.worker_id(name, 0)
    except (TypeError, ValueError) as exc:
        errors.append(f"{key}: bad group name: {exc}")
    try:
        cls = config_class(group.type)
    except UnknownWorkerTypeError as exc:
        errors.append(f"{key}.type: {exc}")
    else:
        if not isinstance(group.config, cls):
            errors.append(f"{key}.config: is a {type(group.config).__name__}, but type {group.type!r} takes a "
                          f"{cls.__name__}")
    if group.count < 1:
        errors.append(f"{key}.count: must be >= 1, got {group.count}")
    for field, low in (("cpus", 1), ("memory_mb", 1), ("gpus", 0)):
        if getattr(group.resources, field) < low:
            errors.append(f"{key}.resources.{field}: must be >= {low}, got {getattr(group.resources, field)}")
    if group.max_restarts < 0:
        errors.append(f"{key}.max_restarts: must be >= 0, got {group.max_restarts}")
    if not 0 <= group.max_failed < max(group.count, 1):
        errors.append(f"{key}.max_failed: must be >= 0 and below count ({group.count}), so that a worker is left; "
                      f"got {group.max_failed}")
    if not (math.isfinite(group.restart_backoff_s) and group.restart_backoff_s >= 0):
        errors.append(f"{key}.restart_backoff_s: must be a finite number >= 0, got {group.restart_backoff_s}")
    errors += [f"{key}.slurm.{problem}" for problem in placement_errors(group.slurm)]
    errors += [f"{key}.ray.{problem}" for problem in ray_placement_errors(group.ray)]
    for i, other in enumerate(group.after):
        if other not in config.workers or other == name:
            errors.append(f"{key}.after[{i}]: {other!r} is not another worker group; groups: "
                          f"{', '.join(config.workers)}")
    return errors


def group_levels(config: ExperimentConfig) -> list[list[str]]:
    """Groups in dependency order: each level's groups come only `after` groups of earlier levels."""
    remaining = {name: set(group.after) for name, group in config.workers.items()}
    levels: list[list[str]] = []
    placed: set[str] = set()
    while remaining:
        level = [name for name, deps in remaining.items() if deps <= placed]
        if not level:
            raise ValueError(f"workers.*.after: groups {sorted(remaining)} wait on each other in a cycle")
        levels.append(level)
        placed.update(level)
        for name in level:
            del remaining[name]
    return levels
