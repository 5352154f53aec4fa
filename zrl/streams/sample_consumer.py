"""Sample consumers: a bound PULL socket, optionally registered in the name service (NameResolving)."""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import zmq

from zrl import wire
from zrl.streams.counters import StreamCounters
from zrl.streams.curve import CurveKeys
from zrl.streams.registration import RegisteredMixin
from zrl.streams.sample import SAMPLE_TAG, SampleStreamConfig
from zrl.streams.sockets import BoundEndpoint, bind_socket, oversized, receive_batch

logger = logging.getLogger(__name__)


class SampleConsumer(BoundEndpoint):
    """Binds a PULL socket (at `address`, or a free port on `bind_host`) and drains samples from producers.

    With `curve`, only producers holding the trial's keys connect (`zrl.streams.curve`)."""

    def __init__(self, config: SampleStreamConfig | None = None, *, address: str | None = None,
                 name: str = "sample", context: zmq.Context | None = None, curve: CurveKeys | None = None):
        self.config = config or SampleStreamConfig()
        self.counters = StreamCounters(name, logger)
        self._socket, self.address = bind_socket(context or zmq.Context.instance(), zmq.PULL,
                                                 self.config.sockets, address, counters=self.counters, curve=curve)
        self._ready: deque[Any] = deque()
        self._closed = False

    def consume(self, max_samples: int, timeout: float = 0.0) -> list[Any]:
        """Return up to `max_samples` samples, waiting at most `timeout` seconds for the first one."""
        return receive_batch(self._socket, self._ready, max_samples, timeout, self._accept)

    def _accept(self, frames: list[Any]) -> None:
        if oversized(frames, self.config.sockets, self.counters):
            return
        try:
            body = wire.decode(frames)
        except wire.WireError as exc:
            self.counters.garbage("undecodable", exc)
            return
        if not (isinstance(body, list) and len(body) == 2 and body[0] == SAMPLE_TAG and isinstance(body[1], list)):
            self.counters.garbage("not_a_sample_batch", f"expected [{SAMPLE_TAG!r}, [samples]], got {type(body).__name__}")
            return
        self.counters.add("received", len(body[1]))
        self.counters.add("messages_received")
        self._ready.extend(body[1])


class NameResolvingSampleConsumer(RegisteredMixin, SampleConsumer):
    """A consumer that registers its address under `root` with a keepalive TTL, so producers find it."""

    def __init__(self, resolver: Any, root: str, config: SampleStreamConfig | None = None, *,
                 address: str | None = None, name: str = "sample", context: zmq.Context | None = None,
                 curve: CurveKeys | None = None):
        super().__init__(config, address=address, name=name, context=context, curve=curve)
        self._register(resolver, root, self.config.keepalive_ttl_s)


def IpSampleConsumer(address: str | None = None, config: SampleStreamConfig | None = None,
                     **kwargs: Any) -> SampleConsumer:
    """A consumer bound at a fixed `address` (or a free port when None)."""
    return SampleConsumer(config, address=address, **kwargs)
