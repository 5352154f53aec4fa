"""`ParamDB`: versioned model weights on a shared filesystem, published atomically.

A version is written into `.tmp-...` next to its final place, fsynced, and renamed to `v{version:08d}`, so a
reader sees all of it or nothing. `latest` and tags are small files replaced with `os.replace`. When a name
resolver is given, `push` also publishes the version under `names.param_version(...)`, which `wait_newer`
polls so readers learn of a new version without touching the disk.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zrl.paramdb import layout
from zrl.paramdb.config import ParamDBConfig
from zrl.paramdb.errors import (
    CorruptVersionError,
    ParamDBError,
    PushError,
    VersionExistsError,
    VersionNotFoundError,
)
from zrl.paramdb.manifest import Manifest, read_manifest
from zrl.paramdb.safetensors_io import read_shard, verify_file
from zrl.paramdb.state import split_aliases, state_dict_of
from zrl.paramdb.writer import WriteStep, write_version_files

VersionRef = int | str
"""A version number, "latest", or a tag."""

_OS_REASONS = {errno.ENOSPC: "disk full (ENOSPC)", errno.EDQUOT: "disk quota exceeded (EDQUOT)",
               errno.EACCES: "permission denied (EACCES)", errno.EPERM: "operation not permitted (EPERM)",
               errno.EROFS: "read-only filesystem (EROFS)"}


@dataclass
class LoadedVersion:
    """One version as read: its number, directory, tensors (None when only the path was asked for) and metadata."""

    model: str
    version: int
    path: Path
    state_dict: dict[str, torch.Tensor] | None
    metadata: dict[str, Any] = field(default_factory=dict)
    fell_back_from: int | None = None
    """The version that was asked for and found corrupt, when `fallback=True` returned an older one."""


class _VersionGone(Exception):
    """The version directory disappeared (garbage collection) while it was being read."""


class ParamDB:
    """Versions of the models of one trial, under `{root}/{experiment}/{trial}/{model}/`."""

    def __init__(self, root: Path | str, experiment: str, trial: str, name_resolver: Any = None,
                 config: ParamDBConfig | None = None, logger: logging.Logger | None = None):
        self.root = Path(root)
        self.experiment = layout.check_name("experiment", experiment)
        self.trial = layout.check_name("trial", trial)
        self.name_resolver = name_resolver
        self.config = config if config is not None else ParamDBConfig()
        self.log = logger if logger is not None else logging.getLogger(__name__)

    def model_dir(self, model: str) -> Path:
        return self.root / self.experiment / self.trial / layout.check_name("model", model)

    def version_path(self, model: str, version: int) -> Path:
        return self.model_dir(model) / layout.version_dirname(layout.check_version(version))

    # Writing.

    def push(self, model: str, state_dict_or_model: Any, version: int, tags: tuple[str, ...] | list[str] = (),
             metadata: dict[str, Any] | None = None, *, config: Any = None, tokenizer: Any = None) -> Path:
        """Store a new version and point `latest` (if it is the newest) and `tags` at it; returns its directory.

        `state_dict_or_model` is a `torch.nn.Module` (its `config` and `generation_config` are saved too) or a
        dict of tensors, with `config` (a `PretrainedConfig` or a dict) when the directory should load with
        `from_pretrained`. `tokenizer` is saved with its `save_pretrained`. `metadata` must be JSON-serializable.
        """
        model_dir = self.model_dir(model)
        layout.check_version(version)
        tags = [layout.check_tag(tag) for tag in tags]
        metadata = dict(metadata or {})
        try:
            json.dumps(metadata)
        except (TypeError, ValueError) as err:
            raise TypeError(f"push metadata for model {model!r} version {version} is not JSON-serializable: {err}"
                            ) from err
        state = state_dict_of(state_dict_or_model)
        generation_config = None
        if isinstance(state_dict_or_model, torch.nn.Module):
            config = config if config is not None else getattr(state_dict_or_model, "config", None)
            generation_config = getattr(state_dict_or_model, "generation_config", None)
        tensors, aliases = split_aliases(state)
        final = model_dir / layout.version_dirname(version)
        if final.exists():
            raise VersionExistsError(f"model {model!r} version {version} already exists at {final}")
        template = Manifest(self.experiment, self.trial, model, version, 0.0, {}, aliases, metadata)
        step = WriteStep()
        tmp = model_dir / f"{layout.TMP_PREFIX}{final.name}-{layout.unique_suffix()}"
        became_latest = False
        try:
            step.current = model_dir
            model_dir.mkdir(parents=True, exist_ok=True)
            step.current = tmp
            tmp.mkdir()
            write_version_files(tmp, tensors, template, config=config, generation_config=generation_config,
                                tokenizer=tokenizer, max_shard_bytes=self.config.max_shard_bytes,
                                write_threads=self.config.write_threads,
                                durable=self.config.fsync, step=step)
            step.current = final
            with layout.writer_lock(model_dir):
                became_latest = self._publish(model_dir, tmp, final, tags)
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(err, OSError) and not isinstance(err, ParamDBError):
                reason = _OS_REASONS.get(err.errno or 0, err.strerror or type(err).__name__)
                raise PushError(err.errno, f"push of model {model!r} version {version} failed: {reason} while "
                                f"writing {err.filename or step.current}; the partial version was removed "
                                f"and earlier versions are intact") from err
            raise
        if became_latest:
            self._notify(model, version)
        return final

    def _publish(self, model_dir: Path, tmp: Path, final: Path, tags: list[str]) -> bool:
        try:
            os.rename(tmp, final)
        except OSError as err:
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise VersionExistsError(f"version directory {final} was created by another writer") from err
            raise
        durable = self.config.fsync
        if durable:
            layout.fsync_dir(model_dir)
        version = int(final.name[1:])
        for tag in tags:
            (model_dir / "tags").mkdir(exist_ok=True)
            layout.write_pointer(model_dir / "tags" / tag, version, durable)
        latest = layout.read_pointer(model_dir / layout.LATEST)
        if latest is not None and latest >= version:
            return False
        layout.write_pointer(model_dir / layout.LATEST, version, durable)
        return True

    def _notify(self, model: str, version: int) -> None:
        if self.name_resolver is None:
            return
        from zrl.nameresolve import names

        key = names.param_version(self.experiment, self.trial, model)
        try:
            self.name_resolver.add(key, str(version), replace=True)
        except Exception as err:  # the version is on disk; readers still find it by polling `latest`
            self.log.warning("model %r version %d is stored but publishing it under %r failed: %s",
                             model, version, key, err)

    def tag(self, model: str, version: int, tag: str) -> None:
        """Point `tag` at an existing `version` (replacing what it pointed at before)."""
        path = self.version_path(model, version)
        layout.check_tag(tag)
        model_dir = path.parent
        with layout.writer_lock(model_dir):
            if not path.is_dir():
                raise VersionNotFoundError(f"cannot tag model {model!r} version {version}: {path} does not exist")
            (model_dir / "tags").mkdir(exist_ok=True)
            layout.write_pointer(model_dir / "tags" / tag, version, self.config.fsync)

    def untag(self, model: str, tag: str) -> None:
        """Remove `tag`, if it exists (the version it pointed at stays)."""
        (self.model_dir(model) / "tags" / layout.check_tag(tag)).unlink(missing_ok=True)

    def pin(self, model: str, version: int, holder: str) -> None:
        """Protect `version` from `gc` on behalf of `holder` (one pin per holder; a new pin replaces the old).

        Raises VersionNotFoundError when the version is already gone, so a reader pins before it loads.
        """
        layout.check_tag(holder)
        path = self.version_path(model, version)
        with layout.writer_lock(path.parent):
            if not path.is_dir():
                raise VersionNotFoundError(f"cannot pin model {model!r} version {version}: {path} does not exist")
            (path.parent / "pins").mkdir(exist_ok=True)
            layout.write_pointer(path.parent / "pins" / holder, version, durable=False)

    def unpin(self, model: str, holder: str) -> None:
        """Drop `holder`'s pin, if any."""
        (self.model_dir(model) / "pins" / layout.check_tag(holder)).unlink(missing_ok=True)

    def pins(self, model: str) -> dict[str, int]:
        """Every pin of `model` and the version it protects."""
        return self._pointers(self.model_dir(model) / "pins")

    def newer_version(self, model: str, than: int | None) -> int | None:
        """The newest published version above `than` (None: any), or None; never raises, for polling loops.

        The name service answers first (no disk access); the `latest` pointer on disk is the fallback.
        """
        floor = -1 if than is None else than
        candidates: list[int | None] = []
        if self.name_resolver is not None:
            from zrl.nameresolve import names

            candidates.append(self._published_version(names.param_version(self.experiment, self.trial, model)))
        try:
            candidates.append(layout.read_pointer(self.model_dir(model) / layout.LATEST))
        except (OSError, ValueError) as err:
            self.log.debug("reading the latest pointer of model %r failed: %s", model, err)
        newest = max((v for v in candidates if v is not None), default=None)
        return newest if newest is not None and newest > floor else None

    def gc(self, model: str, keep_last: int) -> list[int]:
        """Delete all but the newest `keep_last` versions, keeping tagged, pinned and `latest`; returns those
        deleted."""
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(f"gc keep_last must be an int >= 1, got {keep_last!r}")
        model_dir = self.model_dir(model)
        if not model_dir.is_dir():
            return []
        removed: list[int] = []
        with layout.writer_lock(model_dir):
            versions = layout.stored_versions(model_dir)
            keep = set(versions[-keep_last:]) | set(self.tags(model).values()) | set(self.pins(model).values())
            latest = layout.read_pointer(model_dir / layout.LATEST)
            if latest is not None:
                keep.add(latest)
            for version in versions:
                if version in keep:
                    continue
                # Renaming first makes the version vanish from readers' view in one step.
                trash = model_dir / f"{layout.TRASH_PREFIX}{layout.version_dirname(version)}-{layout.unique_suffix()}"
                os.rename(model_dir / layout.version_dirname(version), trash)
                shutil.rmtree(trash, ignore_errors=True)
                removed.append(version)
            self._remove_abandoned(model_dir)
        return removed

    def _remove_abandoned(self, model_dir: Path) -> None:
        """Remove temporary entries left by crashed processes of this host."""
        host = layout.unique_suffix().rsplit("-", 2)[0]
        for name in os.listdir(model_dir):
            if not name.startswith((layout.TMP_PREFIX, layout.TRASH_PREFIX)):
                continue
            prefix, pid, _ = (name.rsplit("-", 2) + ["", ""])[:3]
            if not prefix.endswith(f"-{host}") or not pid.isdigit() or _pid_alive(int(pid)):
                continue
            path = model_dir / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    # Reading.

    def list_versions(self, model: str) -> list[int]:
        """Stored version numbers, ascending."""
        return layout.stored_versions(self.model_dir(model))

    def latest_version(self, model: str) -> int | None:
        """The version `latest` points at, or None before the first push."""
        return layout.read_pointer(self.model_dir(model) / layout.LATEST)

    def tags(self, model: str) -> dict[str, int]:
        """Every tag of `model` and the version it points at."""
        return self._pointers(self.model_dir(model) / "tags")

    @staticmethod
    def _pointers(directory: Path) -> dict[str, int]:
        try:
            names = sorted(name for name in os.listdir(directory) if not name.startswith("."))
        except FileNotFoundError:
            return {}
        found = {name: layout.read_pointer(directory / name) for name in names}
        return {name: version for name, version in found.items() if version is not None}

    def resolve(self, model: str, version: VersionRef = layout.LATEST) -> int:
        """The version number that `version` ("latest", a tag, or a number) names now."""
        if isinstance(version, int) and not isinstance(version, bool):
            return layout.check_version(version)
        if not isinstance(version, str):
            raise TypeError(f"version must be an int, 'latest' or a tag name, got {version!r}")
        model_dir = self.model_dir(model)
        if version == layout.LATEST:
            number = layout.read_pointer(model_dir / layout.LATEST)
            if number is None:
                raise VersionNotFoundError(f"model {model!r} has no version yet under {model_dir}")
            return number
        number = layout.read_pointer(model_dir / "tags" / layout.check_tag(version))
        if number is None:
            raise VersionNotFoundError(f"model {model!r} has no tag {version!r} (known: {sorted(self.tags(model))})")
        return number

    def get(self, model: str, version: VersionRef = layout.LATEST, device: str | torch.device = "cpu", *,
            as_path: bool = False, fallback: bool = False, verify: bool = True) -> dict[str, torch.Tensor] | Path:
        """The state dict of a version (or, with `as_path`, its verified directory for engines loading from disk).

        Raises CorruptVersionError naming the bad file. With `fallback=True`, a corrupt `latest` falls back to
        the newest valid older version, with a logged warning; `fetch` also reports which version was returned.
        """
        loaded = self.fetch(model, version, device, as_path=as_path, fallback=fallback, verify=verify)
        return loaded.path if as_path else loaded.state_dict

    def fetch(self, model: str, version: VersionRef = layout.LATEST, device: str | torch.device = "cpu", *,
              as_path: bool = False, fallback: bool = False, verify: bool = True) -> LoadedVersion:
        """Like `get`, returning the version number, directory and metadata too."""
        for _ in range(self.config.read_retries + 1):
            number = self.resolve(model, version)
            try:
                return self._load(model, number, device, as_path, verify)
            except _VersionGone:
                if not isinstance(version, str):
                    raise VersionNotFoundError(f"model {model!r} version {number} does not exist (never pushed "
                                               f"or garbage-collected) under {self.model_dir(model)}") from None
            except CorruptVersionError as err:
                if not (fallback and version == layout.LATEST):
                    raise
                return self._fall_back(model, number, err, device, as_path, verify)
        raise VersionNotFoundError(f"model {model!r} {version!r} was garbage-collected while being read, "
                                   f"{self.config.read_retries + 1} times in a row")

    def _fall_back(self, model: str, bad: int, cause: CorruptVersionError, device: str | torch.device,
                   as_path: bool, verify: bool) -> LoadedVersion:
        for older in reversed([v for v in self.list_versions(model) if v < bad]):
            try:
                loaded = self._load(model, older, device, as_path, verify)
            except (_VersionGone, CorruptVersionError) as err:
                self.log.warning("model %r version %d is also unusable: %s", model, older, err)
                continue
            self.log.warning("model %r latest version %d is corrupt (%s); fell back to version %d",
                             model, bad, cause, older)
            loaded.fell_back_from = bad
            return loaded
        raise CorruptVersionError(f"{cause}; no older valid version of model {model!r} to fall back to",
                                  cause.path) from cause

    def _load(self, model: str, version: int, device: str | torch.device, as_path: bool,
              verify: bool) -> LoadedVersion:
        path = self.version_path(model, version)
        try:
            manifest = read_manifest(path)
            if (manifest.model, manifest.version) != (model, version):
                raise CorruptVersionError(f"{path}/manifest.json describes model {manifest.model!r} version "
                                          f"{manifest.version}, not {model!r} version {version}", str(path))
            state = None if as_path else self._read_tensors(path, manifest, verify)
            if as_path and verify:
                for name, record in manifest.files.items():
                    verify_file(path / name, record)
        except FileNotFoundError:
            raise _VersionGone() from None
        except CorruptVersionError:
            if not path.is_dir():
                raise _VersionGone() from None
            raise
        if state is not None and torch.device(device).type != "cpu":
            state = {name: tensor.to(device) for name, tensor in state.items()}
        if state is not None:
            for alias, target in manifest.aliases.items():
                state[alias] = state[target]
        return LoadedVersion(model, version, path, state, manifest.metadata)

    @staticmethod
    def _read_tensors(path: Path, manifest: Manifest, verify: bool) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for name, record in manifest.files.items():
            if name.endswith(".safetensors"):
                state.update(read_shard(path / name, record, verify))
            elif verify:
                verify_file(path / name, record)
        for alias, target in manifest.aliases.items():
            if target not in state:
                raise CorruptVersionError(f"{path}/manifest.json: alias {alias!r} names missing tensor {target!r}",
                                          str(path))
        return state

    def wait_newer(self, model: str, than: int | None, timeout: float) -> int:
        """Block until `latest` is newer than `than` (None: any version) and return it; TimeoutError otherwise."""
        model_dir = self.model_dir(model)
        floor = -1 if than is None else than
        key = None
        if self.name_resolver is not None:
            from zrl.nameresolve import names

            key = names.param_version(self.experiment, self.trial, model)
        disk_every = self.config.disk_poll_interval if key else self.config.poll_interval
        deadline = time.monotonic() + timeout
        next_disk = 0.0
        while True:
            now = time.monotonic()
            candidates = []
            if key is not None:
                candidates.append(self._published_version(key))
            if now >= next_disk:
                candidates.append(layout.read_pointer(model_dir / layout.LATEST))
                next_disk = now + disk_every
            newest = max((v for v in candidates if v is not None), default=None)
            if newest is not None and newest > floor:
                return newest
            if now >= deadline:
                raise TimeoutError(f"no version of model {model!r} newer than {than} within {timeout} s "
                                   f"(latest on disk: {layout.read_pointer(model_dir / layout.LATEST)})")
            time.sleep(min(self.config.poll_interval, max(deadline - now, 0.0)))

    def _published_version(self, key: str) -> int | None:
        try:
            value = self.name_resolver.get(key)
        except KeyError:
            return None
        except Exception as err:  # the name service is an accelerator; the disk stays the source of truth
            self.log.debug("reading %r from the name service failed: %s", key, err)
            return None
        try:
            return layout.check_version(int(value))
        except ValueError:
            self.log.warning("name service entry %r holds %r, not a version number; ignoring it", key, value)
            return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
