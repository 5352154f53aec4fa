"""Build a generation engine by name."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from zrl.engines.base import Engine

ENGINE_KINDS = ("hf", "vllm")


def make_engine(kind: str, model_path: Path | str, version: int = 0, **options: Any) -> Engine:
    """An engine of `kind` ('hf' or 'vllm') over a model directory; `options` are fields of its config dataclass."""
    if kind == "hf":
        from zrl.engines.hf import HFEngine as engine_class
        from zrl.engines.hf import HFEngineConfig as config_class
    elif kind == "vllm":
        from zrl.engines.vllm import VLLMEngine as engine_class
        from zrl.engines.vllm import VLLMEngineConfig as config_class
    else:
        raise ValueError(f"unknown engine kind {kind!r}; known kinds: {', '.join(ENGINE_KINDS)}")
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for engine {kind!r}; known options: {', '.join(sorted(known))}")
    return engine_class(model_path, config_class(**options), version=version)
