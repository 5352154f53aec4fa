"""Validation and subtree matching of '/'-separated name-service keys."""

from __future__ import annotations


def check_key(name: str, what: str = "name") -> str:
    """Return `name` if it is a well-formed key, else raise ValueError saying what is wrong with it.

    A key is non-empty '/'-separated segments; no segment is empty or starts with '.', which keeps
    keys safe as relative paths for the file backend (no '..', no hidden bookkeeping files).
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, got {type(name).__name__}: {name!r}")
    if not name:
        raise ValueError(f"{what} must not be empty")
    if "\x00" in name:
        raise ValueError(f"{what} {name!r} contains a NUL character")
    for segment in name.split("/"):
        if not segment:
            raise ValueError(f"{what} {name!r} has an empty segment (leading, trailing or doubled '/')")
        if segment.startswith("."):
            raise ValueError(f"{what} {name!r} has a segment starting with '.': {segment!r}")
    return name


def check_value(value: str, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"value for name {name!r} must be a str, got {type(value).__name__}")
    return value


def in_subtree(key: str, root: str) -> bool:
    """True when `key` is `root` itself or lies below it ("a/b" holds "a/b/c" but not "a/bc")."""
    return key == root or key.startswith(root + "/")
