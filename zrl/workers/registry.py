"""Worker types by name: each maps to its implementation class and its config class, imported only when asked for.

The controller resolves config classes here (to validate and document a group's `config`) without importing any
worker implementation; the worker process resolves the implementation. A group's `type` may also be a dotted path
'package.module:Class' to a Worker subclass outside this table; its config class is then `Class.config_class`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WorkerType:
    implementation: str
    """Dotted path 'package.module:Class' of the Worker subclass."""
    config: str
    """Dotted path 'package.module:Class' of its frozen config dataclass."""


WORKER_TYPES: dict[str, WorkerType] = {
    "echo_server": WorkerType("zrl.workers.echo:EchoServer", "zrl.workers.echo_config:EchoServerConfig"),
    "echo_producer": WorkerType("zrl.workers.echo:EchoProducer", "zrl.workers.echo_config:EchoProducerConfig"),
    "echo_consumer": WorkerType("zrl.workers.echo:EchoConsumer", "zrl.workers.echo_config:EchoConsumerConfig"),
    "policy": WorkerType("zrl.workers.policy:PolicyWorker", "zrl.workers.treepo_config:PolicyConfig"),
    "rollout": WorkerType("zrl.workers.rollout:RolloutWorker", "zrl.workers.treepo_config:RolloutConfig"),
    "trainer": WorkerType("zrl.workers.trainer:TrainerWorker", "zrl.workers.treepo_config:TrainerConfig"),
    "evaluator": WorkerType("zrl.workers.evaluator:EvaluatorWorker", "zrl.workers.treepo_config:EvaluatorConfig"),
}


class UnknownWorkerTypeError(ValueError):
    """A worker type that is neither registered nor an importable dotted path."""


def load_object(path: str) -> Any:
    """Import 'package.module:Name' and return the named attribute."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise UnknownWorkerTypeError(f"{path!r} is not a dotted path of the form 'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownWorkerTypeError(f"cannot import module {module_name!r} of {path!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise UnknownWorkerTypeError(f"module {module_name!r} has no attribute {attr!r} (from {path!r})") from exc


def _entry(type_name: str) -> WorkerType | None:
    if type_name in WORKER_TYPES:
        return WORKER_TYPES[type_name]
    if ":" in type_name:
        return None
    raise UnknownWorkerTypeError(
        f"unknown worker type {type_name!r}; registered: {', '.join(sorted(WORKER_TYPES))} "
        "(or give a dotted path 'package.module:Class')")


def worker_class(type_name: str) -> type:
    """The Worker subclass that implements `type_name`."""
    entry = _entry(type_name)
    return load_object(entry.implementation if entry else type_name)


def config_class(type_name: str) -> type:
    """The config dataclass of `type_name`, importing only the config's module for registered types."""
    entry = _entry(type_name)
    if entry is not None:
        return load_object(entry.config)
    cls = worker_class(type_name)
    config_cls = getattr(cls, "config_class", None)
    if config_cls is None:
        raise UnknownWorkerTypeError(f"{type_name!r} has no `config_class` attribute; is it a zrl Worker?")
    return config_cls
