"""Concise progress lines on the terminal: the figures workers publish as their headline (training step, reward,
accuracy, ...), or else sample and batch rates from PollResult totals; and workers per status."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from typing import Any, TextIO


class Progress:
    def __init__(self, interval_s: float, out: TextIO):
        self.interval_s = interval_s
        self.out = out
        self._last_time = 0.0
        self._last_samples = 0
        self._last_batches = 0

    def maybe_print(self, workers: Mapping[str, Any], elapsed_s: float) -> None:
        """Print one line if `interval_s` has passed since the last one; `workers` hold `.status`, `.last_reply`."""
        now = time.monotonic()
        if not self.interval_s or now - self._last_time < self.interval_s:
            return
        print(self.line(workers, elapsed_s, now), file=self.out, flush=True)

    def print_final(self, workers: Mapping[str, Any], elapsed_s: float) -> None:
        """Print the line as the run ends, however short the run was (unless progress lines are off)."""
        if self.interval_s:
            print(self.line(workers, elapsed_s, time.monotonic()), file=self.out, flush=True)

    def line(self, workers: Mapping[str, Any], elapsed_s: float, now: float) -> str:
        counts = Counter(state.status for state in workers.values())
        samples = sum(int(state.last_reply.get("sample_count", 0)) for state in workers.values())
        batches = sum(int(state.last_reply.get("batch_count", 0)) for state in workers.values())
        span = now - self._last_time if self._last_time else 0.0
        rate = (samples - self._last_samples) / span if span > 0 else 0.0
        batch_rate = (batches - self._last_batches) / span if span > 0 else 0.0
        self._last_time, self._last_samples, self._last_batches = now, samples, batches
        statuses = ", ".join(f"{status} {n}" for status, n in sorted(counts.items()))
        headline = headline_text(workers)
        if headline:
            return f"[{elapsed_s:7.1f}s] {headline} | {statuses}"
        return (f"[{elapsed_s:7.1f}s] {statuses} | samples {samples} ({rate:.0f}/s) | "
                f"batches {batches} ({batch_rate:.0f}/s)")


def headline_text(workers: Mapping[str, Any]) -> str:
    """The figures workers publish under `stats.headline` ({label: text}), in worker order, as `label text`."""
    parts = []
    for state in workers.values():
        headline = (state.last_reply.get("stats") or {}).get("headline")
        if isinstance(headline, Mapping):
            parts += [f"{label} {text}" for label, text in headline.items()]
    return " | ".join(parts)
