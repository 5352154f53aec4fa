"""Encoding a batch of items for one message, so that one item that cannot be encoded does not sink the rest."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zrl import wire


@dataclass
class EncodedBatch:
    """The frames of `[tag, items]` for the items that encode, and the position and error of each that does not."""

    frames: list[wire.Frame] | None
    """None when no item encodes."""
    items: list[Any]
    refused: list[tuple[int, wire.WireError]] = field(default_factory=list)


def encode_batch(tag: str, items: list[Any]) -> EncodedBatch:
    """Encode `[tag, items]`; if that fails, encode each item alone to find the ones at fault and leave them out."""
    try:
        return EncodedBatch(wire.encode([tag, items]), items)
    except wire.WireError:
        pass
    good: list[Any] = []
    refused: list[tuple[int, wire.WireError]] = []
    for index, item in enumerate(items):
        try:
            wire.encode(item)
        except wire.WireError as exc:
            refused.append((index, exc))
        else:
            good.append(item)
    return EncodedBatch(wire.encode([tag, good]) if good else None, good, refused)


def refused_error(stream: str, refused: list[tuple[str, wire.WireError]]) -> wire.WireError:
    """One error for the items left out of a stream's messages: the first by name and cause, and how many more."""
    what, exc = refused[0]
    more = f"; {len(refused) - 1} more left out" if len(refused) > 1 else ""
    return wire.WireError(f"stream {stream}: {what} was not sent, it cannot be encoded ({exc}){more}")
