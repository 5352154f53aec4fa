"""Inference stream protocol and configuration (DEALER-ROUTER).

Clients hold one DEALER socket per server; a server binds one ROUTER socket. Messages (frames as in
`zrl.wire`; the ROUTER sees the client's routing identity as an extra first frame)::

    client -> server   wire.encode(["request",  [[request_id, payload], ...]])
    server -> client   wire.encode(["response", [[request_id, payload], ...]])

`request_id` is an int unique within the client; `payload` is any wire-encodable value (for
generation: a dict of prefix token ids, max new tokens and sampling params). One message may carry
many requests (client batching) or many responses (server batching).

Failover: a client sends each request to the live server with the fewest outstanding requests.
When a server vanishes from the name service, the client re-sends all its outstanding requests to
another live server with the same ids. When a server leaves a request unanswered past
`request_timeout_s`, the client re-sends the requests past their own deadline (not younger ones) and
quarantines the server for `quarantine_s`; an answer within its deadline lifts the quarantine, a late
one does not. Clients connect with ZMQ_IMMEDIATE and every socket sends ZeroMQ heartbeats, so
nothing queues to a server that is not connected, and a connection whose server stops answering
pings for `heartbeat_timeout_s` is closed: the client then re-sends that server's outstanding
requests at once. A request whose server's queue is full (`send_hwm`) goes to another server at once,
or waits in the client for room; a full queue is back-pressure, never a reason to quarantine.
The first response for an id wins; later ones are dropped and counted as `dropped.duplicate`.

Counters (`as_dict()`), in requests. A client counts `sent` (each send, re-sends included),
`resent` (moved to another server after its server vanished or missed the deadline), `queue_full`
(sends that met a full queue, counted in requests at each try; the requests went elsewhere or
waited, so this is no loss), `received` (first responses),
`cancelled` (given up by the caller before any response), `dropped.duplicate` and
`dropped.cancelled_response`. A server counts `received`, `sent`, `dropped.unroutable` (client gone or full)
and `dropped.unencodable`. Both drop messages that do not decode, lack fields or are too large, and
count them as `garbage.<kind>`. With CURVE (`zrl.streams.curve`), a server counts each connection it refused as
`refused.<kind>`, and a client each failed handshake with a server (one that does not hold the trial's keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zrl.streams.sockets import SocketConfig

REQUEST_TAG = "request"
RESPONSE_TAG = "response"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Default size limit of one message: a batch of requests or responses (token ids of many sequences)."""


@dataclass(frozen=True)
class InferenceStreamConfig:
    """Settings of one inference stream, for clients and servers alike."""

    sockets: SocketConfig = field(default_factory=SocketConfig)
    """High-water marks, message size limit (default `MAX_MESSAGE_BYTES`) and bind host."""
    request_timeout_s: float = 60.0
    """A server that leaves a request unanswered this long is presumed dead and its requests go elsewhere."""
    quarantine_s: float = 10.0
    """How long a server that missed a deadline gets no new requests (unless it is the only one)."""
    connect_timeout_s: float = 2.0
    """How long a client waits, once, for the connection to a newly found server before sending elsewhere."""
    resolve_interval_s: float = 1.0
    """How often name-resolving clients look for new or vanished servers."""
    keepalive_ttl_s: float = 10.0
    """TTL of a server's name-service entry; it vanishes this long after the server dies."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sockets", self.sockets.with_message_limit(MAX_MESSAGE_BYTES))
        for name in ("request_timeout_s", "quarantine_s", "connect_timeout_s", "resolve_interval_s", "keepalive_ttl_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"InferenceStreamConfig.{name} must be > 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Request:
    """A request as a server sees it; pass it back to `respond`."""

    id: int
    payload: Any
    client: bytes
    """Routing identity of the client's socket."""
    received_at: float
    """time.monotonic() when the server read it."""


def parse_batch(body: Any, tag: str) -> list[tuple[int, Any]] | str:
    """Return the (id, payload) pairs of a decoded message body, or a text saying what is wrong with it."""
    if not (isinstance(body, list) and len(body) == 2 and body[0] == tag and isinstance(body[1], list)):
        return f"expected [{tag!r}, [[id, payload], ...]], got {type(body).__name__}"
    pairs = []
    for index, item in enumerate(body[1]):
        if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is int):
            return f"item {index} is not [int id, payload]"
        pairs.append((item[0], item[1]))
    return pairs
