"""The client side of the inference stream that every variant shares: ids, batching, waiting."""

from __future__ import annotations

import abc
import time
from collections.abc import Iterable
from typing import Any

from zrl.streams.counters import StreamCounters


class InferenceClientBase(abc.ABC):
    """Posts requests, returns their ids, and collects responses by id.

    `post` queues a request and, unless `flush=False`, sends every queued request at once; so
    `post(p, flush=False)` many times and one `flush()` sends them as one batch per server.
    """

    def __init__(self, counters: StreamCounters):
        self.counters = counters
        self._next_id = 1
        self._queued: list[tuple[int, Any]] = []
        self._ready: dict[int, Any] = {}

    def post(self, payload: Any, flush: bool = True) -> int:
        """Queue a request and return its id; send the queue now unless `flush` is false."""
        request_id = self._next_id
        self._next_id += 1
        self._queued.append((request_id, payload))
        if flush:
            self._flush()
        return request_id

    def post_many(self, payloads: Iterable[Any]) -> list[int]:
        """Post every payload and send them together; return their ids in order."""
        ids = [self.post(payload, flush=False) for payload in payloads]
        self._flush()
        return ids

    def flush(self) -> None:
        """Send every queued request."""
        self._flush()

    def poll_responses(self, timeout: float = 0.0) -> list[tuple[int, Any]]:
        """Return every (request id, response) that has arrived, waiting at most `timeout` s for the first."""
        if not self._ready:
            self._receive(timeout)
        ready, self._ready = list(self._ready.items()), {}
        return ready

    def wait(self, ids: Iterable[int], timeout: float) -> dict[int, Any]:
        """Return {id: response} for all `ids`; raise TimeoutError naming the missing ids after `timeout` s.

        Responses to other requests stay for a later `poll_responses` or `wait`.
        """
        wanted = list(ids)
        deadline = time.monotonic() + timeout
        while True:
            missing = [request_id for request_id in wanted if request_id not in self._ready]
            if not missing:
                return {request_id: self._ready.pop(request_id) for request_id in wanted}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"inference stream {self.counters.stream}: no response within {timeout} s to "
                                   f"{len(missing)} request(s), e.g. ids {missing[:5]} ({self._describe()})")
            self._receive(remaining)

    def cancel(self, ids: Iterable[int]) -> int:
        """Give up on requests (say, after `wait` timed out): they are not sent again and a late response is dropped.

        Returns how many were still waiting for a response; those are counted as `cancelled`.
        """
        wanted = set(ids)
        queued = {request_id for request_id, _ in self._queued if request_id in wanted}
        self._queued = [(request_id, payload) for request_id, payload in self._queued if request_id not in wanted]
        for request_id in wanted:
            self._ready.pop(request_id, None)
        cancelled = len(queued | self._forget(wanted))
        self.counters.add("cancelled", cancelled)
        return cancelled

    def call(self, payload: Any, timeout: float) -> Any:
        """Post one request and wait for its response."""
        request_id = self.post(payload)
        return self.wait([request_id], timeout)[request_id]

    def as_dict(self) -> dict[str, int]:
        return self.counters.as_dict()

    def __enter__(self) -> InferenceClientBase:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _describe(self) -> str:
        return f"{len(self._queued)} not yet sent"

    def _forget(self, ids: set[int]) -> set[int]:
        """Drop what is known of the sent requests among `ids`; return those that were waiting for a response."""
        return set()

    @abc.abstractmethod
    def _flush(self) -> None:
        """Send the queued requests."""

    @abc.abstractmethod
    def _receive(self, timeout: float) -> None:
        """Move arrived responses into `_ready`, waiting at most `timeout` s for one."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release sockets."""
