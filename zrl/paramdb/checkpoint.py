"""Training checkpoints: everything needed to continue a run exactly where it stood, in safe formats only.

A checkpoint holds the model, the optimizer state, the LR schedule, the RNG states (python, numpy, torch and CUDA),
and a `TrainingProgress` (step, weights version, sample-accounting counters, data position of every rollout shard).
Tensors go into safetensors files, everything else into JSON; nothing is ever unpickled.

    {directory}/                       a run's `checkpoints/`
        step-00000012/
            model.safetensors          the model's tensors (a tied weight once, under its first name)
            state.safetensors          optimizer state tensors (`optimizer/{param}/{key}`) and torch RNG states
            state.json                 progress, optimizer param groups and scalars, LR schedule, python and numpy
                                       RNG states, tied-weight aliases
            manifest.json              size and checksum of each file above; written last
        latest                         text: the step of the newest checkpoint (replaced atomically)
        .tmp-step-00000014-...         a checkpoint being written; never read
        step-00000010.corrupt          a checkpoint that failed verification, set aside

A checkpoint is written into a temporary directory, fsynced and renamed into place, so a crash mid-save leaves the
previous checkpoints as they were. Loading verifies every checksum before anything is changed; a checkpoint that
fails is set aside with a warning and the one before it is used.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zrl.atomic_file import TMP_PREFIX, fsync_dir, unique_suffix, write_atomic
from zrl.paramdb.errors import CorruptVersionError
from zrl.paramdb.layout import numbered_entries
from zrl.paramdb.safetensors_io import FileRecord, checksum_file, read_shard, verify_file, write_shard
from zrl.paramdb.state import split_aliases, to_cpu

FORMAT = 1
LATEST = "latest"
MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
STATE_JSON = "state.json"
STEP_DIR = re.compile(r"^step-(\d{8})$")
CORRUPT_SUFFIX = ".corrupt"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written, or checkpoints exist but none of them can be loaded into this model."""


class _Unusable(Exception):
    """A checkpoint that fails verification: missing, truncated or altered file, or a malformed document."""


@dataclass(frozen=True)
class TrainingProgress:
    """Where a run stands, beside its tensors."""

    step: int
    """Optimizer steps taken."""
    version: int
    """Parameter DB version of the weights after `step` (equal to it unless the run resumed over newer versions)."""
    accounting: dict[str, int] = field(default_factory=dict)
    """Sample-accounting counters (received, trained, dropped, ...)."""
    data_positions: dict[str, int] = field(default_factory=dict)
    """Per rollout shard (by producer), how many of its problems had been started by the newest tree trained."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingProgress:
        return cls(int(data["step"]), int(data["version"]), {str(k): int(v) for k, v in data["accounting"].items()},
                   {str(k): int(v) for k, v in data["data_positions"].items()})


def step_dirname(step: int) -> str:
    return f"step-{step:08d}"


def checkpoint_steps(directory: Path) -> list[int]:
    """Steps of the checkpoints in `directory`, ascending."""
    return numbered_entries(directory, STEP_DIR)


def latest_step(directory: Path) -> int | None:
    """The step the `latest` pointer names, or None when there is none."""
    try:
        return int((directory / LATEST).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


# ---- saving ----

def save_checkpoint(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, progress: TrainingProgress, keep: int = 2,
                    durable: bool = True) -> Path:
    """Write a checkpoint of step `progress.step` and keep the newest `keep`; returns its directory.

    Raises CheckpointError when writing fails; the earlier checkpoints are then intact.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / step_dirname(progress.step)
    tmp = directory / f"{TMP_PREFIX}{final.name}-{unique_suffix()}"
    try:
        tmp.mkdir()
        model_tensors, aliases = split_aliases(model.state_dict())
        state_tensors, document = _snapshot(optimizer, scheduler, progress, aliases)
        files = {MODEL_FILE: write_shard(tmp / MODEL_FILE, to_cpu(model_tensors), durable),
                 STATE_FILE: write_shard(tmp / STATE_FILE, to_cpu(state_tensors), durable)}
        _write_json(tmp / STATE_JSON, document, durable)
        files[STATE_JSON] = checksum_file(tmp / STATE_JSON)
        _write_json(tmp / MANIFEST, {"format": FORMAT, "step": progress.step,
                                     "files": {name: asdict(record) for name, record in files.items()}}, durable)
        if durable:
            fsync_dir(tmp)
        if final.exists():  # an earlier incarnation's checkpoint of this step, which the run went back before
            _remove(final, directory)
        os.rename(tmp, final)
        if durable:
            fsync_dir(directory)
        write_atomic(directory / LATEST, f"{progress.step}\n", durable)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write the checkpoint of step {progress.step} into {directory}: "
                              f"{exc.strerror or exc} ({exc.filename or tmp}); the earlier checkpoints are intact"
                              ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(directory, keep)
    return final


def _snapshot(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
              progress: TrainingProgress, aliases: dict[str, str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the JSON document of a checkpoint, besides the model's own tensors."""
    optimizer_state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in optimizer_state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for device, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{device}"] = state
    python_rng = random.getstate()
    numpy_rng = np.random.get_state()
    document = {
        "format": FORMAT,
        "progress": asdict(progress),
        "model_aliases": aliases,
        "optimizer": {"param_groups": optimizer_state["param_groups"], "scalars": scalars},
        "scheduler": scheduler.state_dict(),
        "rng": {"python": [python_rng[0], list(python_rng[1]), python_rng[2]],
                "numpy": [numpy_rng[0], numpy_rng[1].tolist(), *(v.item() if hasattr(v, "item") else v
                                                                  for v in numpy_rng[2:])]},
    }
    return tensors, document


def _write_json(path: Path, value: Any, durable: bool) -> None:
    try:
        text = json.dumps(value, indent=1)
    except TypeError as exc:
        raise CheckpointError(f"checkpoint document {path.name} holds a value JSON cannot store: {exc}") from exc
    with open(path, "x") as handle:
        handle.write(text)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())


def _remove(path: Path, directory: Path) -> None:
    """Delete a checkpoint directory; renamed first, so it vanishes from view in one step."""
    trash = directory / f"{TMP_PREFIX}trash-{path.name}-{unique_suffix()}"
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _prune(directory: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints; remove older ones and what crashed writers left behind."""
    for step in checkpoint_steps(directory)[:-keep]:
        _remove(directory / step_dirname(step), directory)
    for name in os.listdir(directory):
        path = directory / name
        if not name.startswith(TMP_PREFIX) or _written_by_live_process(name):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _written_by_live_process(tmp_name: str) -> bool:
    """Whether the writer of a temporary entry (`...-{host}-{pid}-{random}`) still runs. One trainer writes the
    checkpoints of a run at a time, so an entry of another host is a leftover too."""
    head, pid, _ = (tmp_name.rsplit("-", 2) + ["", ""])[:3]
    if not head.endswith(f"-{socket.gethostname()}") or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---- loading ----

def load_checkpoint(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler,
                    logger: logging.Logger | None = None) -> TrainingProgress | None:
    """Restore the newest usable checkpoint in `directory` into the given objects and the RNGs; returns its
    progress, or None when there is no checkpoint at all.

    A checkpoint that fails verification is renamed to `step-N.corrupt` with a warning and the one before it is
    tried. Raises CheckpointError when checkpoints exist but none is usable, or one does not fit the model.
    """
    log = logger or logging.getLogger(__name__)
    steps = checkpoint_steps(directory)
    failures = []
    for step in reversed(steps):
        path = directory / step_dirname(step)
        try:
            tensors, document = _read(path)
            progress = TrainingProgress.from_dict(document["progress"])
        except (_Unusable, KeyError, TypeError, ValueError) as exc:
            failures.append(f"{path.name}: {exc}")
            log.warning("checkpoint %s is unusable (%s); it is set aside as %s%s and the one before it is tried",
                        path, exc, path.name, CORRUPT_SUFFIX)
            _set_aside(path)
            continue
        _apply(path, tensors, document, model, optimizer, scheduler)
        return progress
    if failures:
        raise CheckpointError(f"no usable checkpoint in {directory}: {'; '.join(failures)}")
    return None


def _set_aside(path: Path) -> None:
    try:
        os.rename(path, path.with_name(path.name + CORRUPT_SUFFIX))
    except OSError:
        pass  # already set aside by another reader, or a read-only directory: it stays and is skipped again


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every tensor and the document of one checkpoint, each file verified against the manifest."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        if manifest.get("format") != FORMAT:
            raise _Unusable(f"format {manifest.get('format')!r}, this version reads format {FORMAT}")
        records = {name: FileRecord(**record) for name, record in manifest["files"].items()}
        missing = {MODEL_FILE, STATE_FILE, STATE_JSON} - set(records)
        if missing:
            raise _Unusable(f"the manifest lists no {sorted(missing)}")
        tensors = {f"model/{name}": t for name, t in read_shard(path / MODEL_FILE, records[MODEL_FILE]).items()}
        tensors.update(read_shard(path / STATE_FILE, records[STATE_FILE]))
        verify_file(path / STATE_JSON, records[STATE_JSON])
        document = json.loads((path / STATE_JSON).read_text())
    except FileNotFoundError as exc:
        raise _Unusable(f"{Path(exc.filename or path).name} is missing") from exc
    except CorruptVersionError as exc:
        raise _Unusable(str(exc)) from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _Unusable(f"{type(exc).__name__}: {exc}") from exc
    if document.get("format") != FORMAT:
        raise _Unusable(f"{STATE_JSON} has format {document.get('format')!r}")
    return tensors, document


def _apply(path: Path, tensors: dict[str, torch.Tensor], document: dict[str, Any], model: torch.nn.Module,
           optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    model_state = {name[len("model/"):]: t for name, t in tensors.items() if name.startswith("model/")}
    for alias, target in document["model_aliases"].items():
        model_state[alias] = model_state[target]
    try:
        model.load_state_dict(model_state, strict=True)
        optimizer.load_state_dict(_optimizer_state(tensors, document["optimizer"], optimizer))
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model and optimizer (another model or "
                              f"optimizer setting than the run it continues?): {exc}") from exc
    scheduler.load_state_dict(document["scheduler"])
    _restore_rng(tensors, document["rng"])


def _optimizer_state(tensors: dict[str, torch.Tensor], saved: dict[str, Any],
                     optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`optimizer.state_dict()` as it was saved; tuples (betas) come back as tuples, as the live groups hold them."""
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        if name.startswith("optimizer/"):
            _, index, key = name.split("/", 2)
            state.setdefault(int(index), {})[key] = tensor
    for index, entry in saved["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    if len(saved["param_groups"]) != len(optimizer.param_groups):
        raise ValueError(f"{len(saved['param_groups'])} saved parameter groups, the optimizer has "
                         f"{len(optimizer.param_groups)}")
    groups = [{key: tuple(value) if isinstance(live.get(key), tuple) else value for key, value in group.items()}
              for group, live in zip(saved["param_groups"], optimizer.param_groups, strict=True)]
    return {"state": state, "param_groups": groups}


def _restore_rng(tensors: dict[str, torch.Tensor], saved: dict[str, Any]) -> None:
    version, internal, gauss = saved["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = saved["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(tensors["rng/torch"].clone())
    cuda = sorted((int(name.rsplit("/", 1)[1]), t) for name, t in tensors.items() if name.startswith("rng/cuda/"))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.clone() for _, t in cuda])
