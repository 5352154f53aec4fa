"""What the TreePO workers share: the model directory, the parameter DB, the problems and the metrics files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from zrl.paramdb import ParamDB
from zrl.rl.problem import Problem
from zrl.workers.base import WorkerContext
from zrl.workers.treepo_config import ModelSource, ProblemSource

FINAL_TAG = "final"
"""Tag of the version the trainer pushes after its last step."""
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def run_dir(context: WorkerContext) -> Path:
    return Path(context.run_dir) if context.run_dir else Path.cwd()


def model_path(source: ModelSource) -> Path:
    """The model directory to start from: `source.path`, or the tiny built-in model of `source.builtin`."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one bar per load would flood the worker logs
    if source.path:
        path = Path(source.path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model.path={source.path!r} is not a model directory (no config.json in it)")
        return path
    from zrl.rl.tiny_model import tiny_model_for

    return tiny_model_for(source.builtin)


def load_tokenizer(path: Path) -> Any:
    """The tokenizer of a model directory, as it was saved.

    A tokenizer saved as a plain fast tokenizer (the tiny model's character-level one) is loaded as such:
    AutoTokenizer would pick the class of the model's architecture (Qwen2) and change how it splits text.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        saved_class = json.loads((path / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError):
        saved_class = None
    if saved_class in ("PreTrainedTokenizerFast", "TokenizersBackend") and (path / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(path))
    return AutoTokenizer.from_pretrained(str(path))


def open_paramdb(source: ModelSource, context: WorkerContext, name_resolver: Any) -> ParamDB:
    """The trial's parameter DB; by default it lives in the run directory (`{run_root}/{experiment}/{trial}`)."""
    root = Path(source.paramdb_root) if source.paramdb_root else run_dir(context).resolve().parents[1]
    return ParamDB(root, context.experiment, context.trial, name_resolver=name_resolver)


def load_problems(source: ProblemSource) -> list[Problem]:
    """Every problem of `source`, in a fixed order."""
    if source.kind == "synthetic":
        from zrl.rl.synthetic import generate_problems, task_config

        return generate_problems(source.split, source.count, seed=source.seed, config=task_config(source.task))
    if not source.file.path:
        raise ValueError("problems.kind=file needs problems.file.path (a .jsonl or .parquet file)")
    from zrl.rl.datasets import load_problems as load_file

    loaded = load_file(source.file)
    if not loaded.problems:
        raise ValueError(f"dataset {source.file.path} holds no usable problem ({loaded.skipped} malformed rows "
                         f"skipped: {loaded.skip_reasons[:3]})")
    return loaded.problems


def set_threads(threads: int) -> None:
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def torch_device(name: str) -> Any:
    """The torch device `name` names; "auto": the GPU when there is one, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class MetricsLog:
    """Appends metric records as JSON lines to `metrics.jsonl` and, when tensorboardX is installed, as
    TensorBoard scalars; several workers may share the file (each record is one write of one line)."""

    def __init__(self, directory: Path, writer_name: str):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / METRICS_FILE
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._tb = None
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(directory / TENSORBOARD_DIR / writer_name), flush_secs=5)
        except ImportError:
            pass

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        record = {"kind": kind, "step": step, "time": time.time(), **values}
        os.write(self._fd, (json.dumps(record, default=float) + "\n").encode())
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
