"""Load an experiment file: plain Python that defines `experiment() -> ExperimentConfig` or `EXPERIMENT`."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

from zrl.config import ExperimentConfig


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Run the experiment file at `path` and return the config it builds."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment file {str(path)!r} does not exist")
    module_name = f"zrl_experiment_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load experiment file {str(path)!r} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(module_name, None)
    if callable(getattr(module, "experiment", None)):
        config = module.experiment()
    elif hasattr(module, "EXPERIMENT"):
        config = module.EXPERIMENT
    else:
        raise AttributeError(f"experiment file {str(path)!r} defines neither experiment() nor EXPERIMENT")
    if not isinstance(config, ExperimentConfig):
        raise TypeError(f"experiment file {str(path)!r} built a {type(config).__name__}, "
                        "not a zrl.config.ExperimentConfig")
    return config
