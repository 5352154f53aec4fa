"""Inference servers: a bound ROUTER socket that hands out requests in batches and routes responses back."""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Iterable
from typing import Any

import zmq

from zrl import wire
from zrl.streams.counters import StreamCounters
from zrl.streams.curve import CurveKeys
from zrl.streams.encoding import encode_batch, refused_error
from zrl.streams.inference import REQUEST_TAG, RESPONSE_TAG, InferenceStreamConfig, Request, parse_batch
from zrl.streams.registration import RegisteredMixin
from zrl.streams.sockets import (
    BoundEndpoint,
    bind_socket,
    oversized,
    receive_batch,
    send_frames,
)

logger = logging.getLogger(__name__)


class InferenceServer(BoundEndpoint):
    """Serves an inference stream at a fixed `address` (or a free port on `bind_host`): the Ip variant.

    With `curve`, only clients holding the trial's keys connect (`zrl.streams.curve`)."""

    def __init__(self, config: InferenceStreamConfig | None = None, *, address: str | None = None,
                 name: str = "inference", context: zmq.Context | None = None, curve: CurveKeys | None = None):
        self.config = config or InferenceStreamConfig()
        self.counters = StreamCounters(name, logger)
        self._socket, self.address = bind_socket(context or zmq.Context.instance(), zmq.ROUTER,
                                                 self.config.sockets, address, counters=self.counters, curve=curve)
        # Fail a send to a vanished or full client instead of silently discarding it, so it is counted.
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._ready: deque[Request] = deque()
        self._closed = False

    def poll_requests(self, max_batch: int, timeout: float = 0.0) -> list[Request]:
        """Return up to `max_batch` requests from any clients, waiting at most `timeout` s for the first."""
        return receive_batch(self._socket, self._ready, max_batch, timeout, self._accept)

    def respond(self, request: Request, payload: Any) -> bool:
        """Send the response to `request`; return False (and count it) if its client is gone or full."""
        return self.respond_many([(request, payload)]) == 1

    def respond_many(self, responses: Iterable[tuple[Request, Any]]) -> int:
        """Send many responses, one message per client; return how many were sent.

        Responses that cannot be encoded are dropped and counted; after the others are sent, WireError names them.
        """
        by_client: dict[bytes, list[list[Any]]] = defaultdict(list)
        for request, payload in responses:
            by_client[request.client].append([request.id, payload])
        sent = 0
        refused: list[tuple[str, wire.WireError]] = []
        for client, pairs in by_client.items():
            batch = encode_batch(RESPONSE_TAG, pairs)
            refused += [(f"the response to request {pairs[index][0]}", exc) for index, exc in batch.refused]
            if batch.frames is None:
                continue
            try:
                send_frames(self._socket, [client, *batch.frames], zmq.NOBLOCK)
            except (zmq.Again, zmq.ZMQError) as exc:
                self.counters.dropped("unroutable", len(batch.items), f"client {client.hex()} gone or full: {exc}")
                continue
            self.counters.add("sent", len(batch.items))
            sent += len(batch.items)
        if refused:
            self.counters.dropped("unencodable", len(refused), refused[0][0])
            raise refused_error(self.counters.stream, refused)
        return sent

    def _accept(self, frames: list[Any]) -> None:
        if oversized(frames, self.config.sockets, self.counters):
            return
        client = frames[0].bytes
        try:
            body = wire.decode(frames[1:])
        except wire.WireError as exc:
            self.counters.garbage("undecodable", exc)
            return
        pairs = parse_batch(body, REQUEST_TAG)
        if isinstance(pairs, str):
            self.counters.garbage("not_a_request_batch", pairs)
            return
        now = time.monotonic()
        self.counters.add("received", len(pairs))
        self._ready.extend(Request(request_id, payload, client, now) for request_id, payload in pairs)


class NameResolvingInferenceServer(RegisteredMixin, InferenceServer):
    """A server that registers its address under `root` with a keepalive TTL, so clients find it."""

    def __init__(self, resolver: Any, root: str, config: InferenceStreamConfig | None = None, *,
                 address: str | None = None, name: str = "inference", context: zmq.Context | None = None,
                 curve: CurveKeys | None = None):
        super().__init__(config, address=address, name=name, context=context, curve=curve)
        self._register(resolver, root, self.config.keepalive_ttl_s)
