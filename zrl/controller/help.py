"""`--help` text built from the config dataclasses: every key with its type, default and one-line docstring."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import typing
from typing import Any

from zrl.config import ExperimentConfig, WorkerGroupConfig


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of the dataclass `cls` (and its bases), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, following in zip(body, body[1:], strict=False):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                docs[stmt.target.id] = " ".join(following.value.value.split())
    return docs


def _type_name(tp: Any) -> str:
    text = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
    return text or str(tp).replace("typing.", "")


def describe_fields(obj: Any, prefix: str = "") -> list[str]:
    """One line per leaf key of the dataclass instance `obj`: 'key (type, default value): doc'."""
    lines: list[str] = []
    hints = typing.get_type_hints(type(obj))
    docs = field_docs(type(obj))
    for field in dataclasses.fields(obj):
        key = f"{prefix}{field.name}"
        value = getattr(obj, field.name)
        doc = docs.get(field.name, "")
        if dataclasses.is_dataclass(value):
            lines.append(f"  {key}.*  {doc}")
            lines += describe_fields(value, f"{key}.")
        elif isinstance(value, dict) or value is None and field.name == "config":
            lines.append(f"  {key}.*  {doc}")
        else:
            lines.append(f"  {key} ({_type_name(hints[field.name])}, default {value!r}): {doc}")
    return lines


def config_help(config: ExperimentConfig | None = None) -> str:
    """Every key of `config` (or of an empty experiment with one example group), documented."""
    base = config or ExperimentConfig(workers={"<group>": WorkerGroupConfig()})
    top = dataclasses.replace(base, workers={})
    lines = ["experiment keys:"] + [line for line in describe_fields(top)
                                    if not line.startswith(("  workers.*", "  aliases.*"))]
    lines.append("  workers.<group>.*  " + field_docs(ExperimentConfig)["workers"])
    if base.aliases:
        lines.append("\naliases (one key sets several):")
        lines += [f"  {alias} -> {', '.join(targets)}" for alias, targets in base.aliases.items()]
    for group, spec in base.workers.items():
        lines.append(f"\nworkers.{group} (type {spec.type or '<type>'}):")
        lines += describe_fields(spec, f"workers.{group}.")
    return "\n".join(lines)
