"""`key=value` overrides with dotted paths into the frozen experiment config.

Each value is parsed by the annotated type of the field it sets (int, float, bool, str, Literal choices, enums,
optional values, tuples and lists written as `a,b` or `[a,b]`). Every bad override is reported at once, each naming
its key and what would have been allowed.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from typing import Any

from zrl.config import ExperimentConfig


class ConfigError(ValueError):
    """One or more problems in an experiment config; `errors` lists each, naming its key."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("invalid experiment config:\n" + "\n".join(f"  - {e}" for e in self.errors))


def apply_overrides(config: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Return `config` with every `key=value` applied; raise ConfigError listing every bad one."""
    errors: list[str] = []
    for text in overrides:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key:
            errors.append(f"{text!r}: an override must look like key=value (for example workers.producer.count=2)")
            continue
        targets = config.aliases.get(key, (key,))
        for target in targets:
            try:
                config = _set(config, target.split("."), raw, [])
            except ValueError as exc:
                errors.append(str(exc) if target == key else f"{key} (alias of {target}): {exc}")
    if errors:
        raise ConfigError(errors)
    return config


def _set(node: Any, parts: list[str], raw: str, done: list[str]) -> Any:
    head, rest = parts[0], parts[1:]
    path = ".".join([*done, head])
    if isinstance(node, dict):
        if head not in node:
            raise ValueError(f"{path}: unknown key; allowed: {', '.join(sorted(node)) or '(none)'}")
        if not rest:
            raise ValueError(f"{path}: is a section; set one of its keys: {', '.join(_keys(node[head]))}")
        return {**node, head: _set(node[head], rest, raw, [*done, head])}
    if dataclasses.is_dataclass(node):
        names = [f.name for f in dataclasses.fields(node)]
        if head not in names:
            aliases = sorted(node.aliases) if isinstance(node, ExperimentConfig) else []
            more = f"; aliases: {', '.join(aliases)}" if aliases else ""
            raise ValueError(f"{path}: unknown key; allowed: {', '.join(names)}{more}")
        child = getattr(node, head)
        if rest:
            if child is None:
                raise ValueError(f"{path}: is empty, so it has no key {rest[0]!r}")
            value = _set(child, rest, raw, [*done, head])
        else:
            if dataclasses.is_dataclass(child) or isinstance(child, dict):
                raise ValueError(f"{path}: is a section; set one of its keys: {', '.join(_keys(child))}")
            value = parse_value(raw, typing.get_type_hints(type(node))[head], path)
        try:
            return dataclasses.replace(node, **{head: value})
        except (TypeError, ValueError) as exc:  # raised by the dataclass's own checks (__post_init__)
            raise ValueError(f"{path}: {exc}") from None
    raise ValueError(f"{path}: {'.'.join(done)} is a {type(node).__name__} value, not a section")


def key_exists(config: ExperimentConfig, key: str) -> bool:
    """Whether the dotted `key` names a settable leaf of `config`."""
    node: Any = config
    for part in key.split("."):
        if isinstance(node, dict):
            if part not in node:
                return False
            node = node[part]
        elif dataclasses.is_dataclass(node) and part in {f.name for f in dataclasses.fields(node)}:
            node = getattr(node, part)
        else:
            return False
    return not (dataclasses.is_dataclass(node) or isinstance(node, dict))


def _keys(node: Any) -> list[str]:
    if isinstance(node, dict):
        return sorted(node)
    return [f.name for f in dataclasses.fields(node)]


def parse_value(raw: str, tp: Any, key: str) -> Any:
    """Parse the text `raw` as a value of type `tp`; a ValueError names `key`, the type and the allowed values."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    text = raw.strip()
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if len(members) < len(args) and text.lower() in ("none", "null", ""):
            return None
        errors = []
        for member in members:
            try:
                return parse_value(raw, member, key)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if len(errors) == 1 else f"{key}: {raw!r} matches none of {tp}")
    if origin is typing.Literal:
        choices = {str(a): a for a in args}
        if text not in choices:
            raise ValueError(f"{key}: {raw!r} is not allowed; allowed values: {', '.join(choices)}")
        return choices[text]
    if origin in (tuple, list):
        item = args[0] if args else str
        inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        items = [parse_value(part, item, f"{key}[{i}]") for i, part in enumerate(inner.split(","))] if inner.strip() else []
        return tuple(items) if origin is tuple else items
    if tp is bool:
        lowered = text.lower()
        if lowered in ("true", "yes", "1", "on"):
            return True
        if lowered in ("false", "no", "0", "off"):
            return False
        raise ValueError(f"{key}: expected a bool, got {raw!r}; allowed values: true, false")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{key}: expected an int, got {raw!r}") from None
    if tp is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{key}: expected a float, got {raw!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{key}: expected a finite number, got {raw!r}")
        return value
    if tp is str or tp is Any:
        return raw
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if text in (member.name, str(member.value)):
                return member
        raise ValueError(f"{key}: {raw!r} is not allowed; allowed values: {', '.join(m.name for m in tp)}")
    raise ValueError(f"{key}: values of type {tp} cannot be set from the command line")
