"""Counts of what a stream sent, received, dropped and refused, each kind of trouble logged once."""

from __future__ import annotations

import logging
from collections import Counter

from zrl.wire import WireError


class StreamCounters:
    """Counts of what a stream sent, received and dropped; `as_dict()` feeds the metrics."""

    def __init__(self, stream: str, logger: logging.Logger):
        self.stream = stream
        self.logger = logger
        self._counts: Counter[str] = Counter(sent=0, received=0, dropped=0, garbage=0)
        self._logged_kinds: set[str] = set()

    def add(self, key: str, amount: int = 1) -> None:
        self._counts[key] += amount

    def __getitem__(self, key: str) -> int:
        return self._counts[key]

    def as_dict(self) -> dict[str, int]:
        return dict(self._counts)

    def garbage(self, kind: str, detail: str | WireError) -> None:
        """Count a malformed incoming message; log the first of each kind, so a flood cannot fill the log."""
        self._counts["garbage"] += 1
        self._counts[f"garbage.{kind}"] += 1
        if kind not in self._logged_kinds:
            self._logged_kinds.add(kind)
            self.logger.warning("stream %s: dropped a malformed message (%s): %s; further ones are only counted",
                                self.stream, kind, detail)

    def rejected(self, kind: str, detail: str) -> None:
        """Count a message refused as not authentic (unsigned, forged, misdirected, stale, replayed); log the first
        of each kind."""
        self._count_refusal("rejected", kind, "rejected a message", detail)

    def refused(self, kind: str, detail: str) -> None:
        """Count a connection refused at the CURVE handshake (`zrl.streams.curve_guard` names the kinds); log the first
        of each kind. For a bound socket, only its guard's thread calls this, so it alone writes these keys."""
        self._count_refusal("refused", kind, "refused a connection", detail)

    def _count_refusal(self, counter: str, kind: str, what: str, detail: str) -> None:
        self._counts[counter] += 1
        self._counts[f"{counter}.{kind}"] += 1
        if f"{counter}.{kind}" not in self._logged_kinds:
            self._logged_kinds.add(f"{counter}.{kind}")
            self.logger.warning("stream %s: %s (%s): %s; further ones are only counted", self.stream, what, kind, detail)

    def dropped(self, kind: str, amount: int, detail: str) -> None:
        """Count well-formed items that were dropped on purpose (full queue, duplicate); log the first of each kind."""
        self._counts["dropped"] += amount
        self._counts[f"dropped.{kind}"] += amount
        if kind not in self._logged_kinds:
            self._logged_kinds.add(kind)
            self.logger.warning("stream %s: dropped %d item(s) (%s): %s; further ones are only counted",
                                self.stream, amount, kind, detail)
