"""Writing one version into a temporary directory: shards, index, config, tokenizer, manifest, fsync."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from zrl.paramdb.manifest import MANIFEST, Manifest
from zrl.paramdb.safetensors_io import FileRecord, checksum_file, write_shard
from zrl.paramdb.state import SHARD_INDEX, plan_shards, shard_filenames, to_cpu


class WriteStep:
    """The file being written, so an OSError can say where it happened."""

    def __init__(self) -> None:
        self.current: Path | None = None


def write_version_files(tmp: Path, tensors: dict[str, torch.Tensor], manifest: Manifest, *, config: Any,
                        generation_config: Any, tokenizer: Any, max_shard_bytes: int, write_threads: int, durable: bool,
                        step: WriteStep) -> Manifest:
    """Fill the empty directory `tmp` with a loadable version; `manifest` supplies all but files and time."""
    files: dict[str, FileRecord] = {}
    shards = plan_shards(to_cpu(tensors), max_shard_bytes)
    names = shard_filenames(len(shards))
    step.current = tmp
    with ThreadPoolExecutor(max(1, min(write_threads, len(shards)))) as pool:
        futures = [pool.submit(write_shard, tmp / name, shard, durable) for name, shard in zip(names, shards, strict=True)]
    for name, future in zip(names, futures, strict=True):
        files[name] = future.result()
    if len(shards) > 1:
        weight_map = {tensor: name for name, shard in zip(names, shards, strict=True) for tensor in shard}
        total = sum(t.numel() * t.element_size() for shard in shards for t in shard.values())
        _write_json(tmp / SHARD_INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map}, step)
    if config is not None:
        step.current = tmp / "config.json"
        if isinstance(config, Mapping):
            _write_json(step.current, dict(config), step)
        else:
            config.save_pretrained(tmp)
    if generation_config is not None:
        step.current = tmp / "generation_config.json"
        generation_config.save_pretrained(tmp)
    if tokenizer is not None:
        step.current = tmp
        tokenizer.save_pretrained(tmp)
    for path in sorted(tmp.rglob("*")):
        relative = path.relative_to(tmp).as_posix()
        if path.is_file() and relative not in files:
            step.current = path
            files[relative] = checksum_file(path)
    manifest = dataclasses.replace(manifest, created=time.time(), files=files)
    step.current = tmp / MANIFEST
    step.current.write_text(manifest.to_json())
    if durable:
        for relative in [*(name for name in files if name not in names), MANIFEST]:
            step.current = tmp / relative
            _fsync_path(step.current)
        step.current = tmp
        _fsync_path(tmp)
    step.current = None
    return manifest


def _write_json(path: Path, value: object, step: WriteStep) -> None:
    step.current = path
    path.write_text(json.dumps(value, indent=1))


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
