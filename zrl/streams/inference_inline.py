"""The Inline inference variant: the engine runs in this process, called directly, with no socket."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from zrl.streams.counters import StreamCounters
from zrl.streams.inference_base import InferenceClientBase

logger = logging.getLogger(__name__)


class InlineInferenceClient(InferenceClientBase):
    """Calls `handler(payloads) -> responses` (same length, same order) on each flushed batch."""

    def __init__(self, handler: Callable[[list[Any]], list[Any]], *, name: str = "inference"):
        super().__init__(StreamCounters(name, logger))
        self._handler = handler

    def _flush(self) -> None:
        if not self._queued:
            return
        batch, self._queued = self._queued, []
        responses = self._handler([payload for _, payload in batch])
        if len(responses) != len(batch):
            raise ValueError(f"inline inference handler returned {len(responses)} responses for {len(batch)} requests")
        self.counters.add("sent", len(batch))
        self.counters.add("received", len(batch))
        for (request_id, _), response in zip(batch, responses, strict=True):
            self._ready[request_id] = response

    def _receive(self, timeout: float) -> None:
        if not self._queued:
            # Nothing can arrive: every response was made at flush time.
            time.sleep(min(timeout, 0.01))
        self._flush()

    def close(self) -> None:
        self._queued.clear()
