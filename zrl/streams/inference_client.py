"""Inference clients over ZeroMQ: Ip (fixed servers) and NameResolving (servers found in the name service).

Each client holds one DEALER socket per server, so it knows which server holds which request and can
re-send a dead server's requests elsewhere (see `zrl.streams.inference` for the protocol).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from zrl import wire
from zrl.nameresolve import NameResolver, SubtreeView
from zrl.streams.inference import REQUEST_TAG, RESPONSE_TAG, InferenceStreamConfig, parse_batch
from zrl.streams.inference_base import InferenceClientBase
from zrl.streams.sockets import StreamCounters, connect_socket, has_message, receive_within, send_frames

logger = logging.getLogger(__name__)


@dataclass
class _Server:
    address: str
    socket: zmq.Socket
    outstanding: dict[int, float] = field(default_factory=dict)
    """request id -> time.monotonic() when it was sent to this server."""
    quarantined_until: float = 0.0


class InferenceClient(InferenceClientBase):
    """Sends requests to the servers at `addresses`, spreading them by fewest outstanding requests."""

    def __init__(self, addresses: Sequence[str], config: InferenceStreamConfig | None = None, *,
                 name: str = "inference", context: zmq.Context | None = None):
        super().__init__(StreamCounters(name, logger))
        self.config = config or InferenceStreamConfig()
        self._context = context or zmq.Context.instance()
        self._servers: dict[str, _Server] = {}
        self._payloads: dict[int, Any] = {}
        self._owner: dict[int, str] = {}
        self._poller = zmq.Poller()
        self._next_deadline_check = 0.0
        self._set_addresses(list(addresses))

    @property
    def addresses(self) -> list[str]:
        return list(self._servers)

    def outstanding(self) -> int:
        """How many posted requests have no response yet."""
        return len(self._payloads)

    def outstanding_by_server(self) -> dict[str, int]:
        """Unanswered requests per server address (for metrics and diagnostics)."""
        return {address: len(server.outstanding) for address, server in self._servers.items()}

    def server_of(self, request_id: int) -> str | None:
        """Address of the server that holds the unanswered request `request_id`, or None."""
        return self._owner.get(request_id)

    def close(self) -> None:
        for server in self._servers.values():
            server.socket.close(0)
        self._servers.clear()

    def _describe(self) -> str:
        servers = ", ".join(f"{server.address}: {len(server.outstanding)} outstanding" for server in self._servers.values())
        return f"{len(self._queued)} not yet sent; servers: {servers or 'none known'}"

    def _set_addresses(self, addresses: list[str]) -> None:
        for address in [address for address in self._servers if address not in addresses]:
            server = self._servers.pop(address)
            self._poller.unregister(server.socket)
            server.socket.close(0)
            self._requeue(server, f"server {address} left the name service")
        for address in addresses:
            if address not in self._servers:
                sock = connect_socket(self._context, zmq.DEALER, self.config.sockets, address)
                self._servers[address] = _Server(address, sock)
                self._poller.register(sock, zmq.POLLIN)

    def _requeue(self, server: _Server, reason: str) -> None:
        if not server.outstanding:
            return
        ids = sorted(server.outstanding)
        server.outstanding.clear()
        for request_id in ids:
            self._owner.pop(request_id, None)
        self.counters.add("resent", len(ids))
        logger.warning("inference stream %s: re-sending %d request(s) elsewhere: %s",
                       self.counters.stream, len(ids), reason)
        self._queued[:0] = [(request_id, self._payloads[request_id]) for request_id in ids]

    def _refresh_servers(self, force: bool = False) -> None:
        """Hook for clients whose server set can change."""

    def _maintain(self) -> None:
        now = time.monotonic()
        if now < self._next_deadline_check:
            self._flush()
            return
        # Scanning every outstanding request costs more than a round trip once many are in flight, so
        # it runs at most every check interval: a late server is still found within one interval.
        self._next_deadline_check = now + self._check_interval()
        late = [server for server in self._servers.values()
                if any(now - sent_at > self.config.request_timeout_s for sent_at in server.outstanding.values())]
        if late:
            self._refresh_servers(force=True)
        for server in late:
            if server.address in self._servers:
                server.quarantined_until = now + self.config.quarantine_s
                self._requeue(server, f"server {server.address} missed the {self.config.request_timeout_s} s deadline")
        self._flush()

    def _pick(self, now: float) -> _Server | None:
        if len(self._servers) == 1:
            return next(iter(self._servers.values()))
        healthy = [server for server in self._servers.values() if server.quarantined_until <= now]
        candidates = healthy or list(self._servers.values())
        return min(candidates, key=lambda server: len(server.outstanding), default=None)

    def _flush(self) -> None:
        if not self._queued:
            return
        self._refresh_servers()
        if not self._servers:
            return
        now = time.monotonic()
        batches: dict[str, list[list[Any]]] = {}
        for request_id, payload in self._queued:
            server = self._pick(now)
            assert server is not None
            self._payloads[request_id] = payload
            self._owner[request_id] = server.address
            server.outstanding[request_id] = now
            batches.setdefault(server.address, []).append([request_id, payload])
        self._queued.clear()
        for address, pairs in batches.items():
            server = self._servers[address]
            try:
                send_frames(server.socket, wire.encode([REQUEST_TAG, pairs]), zmq.NOBLOCK)
                self.counters.add("sent", len(pairs))
            except zmq.Again:
                # Its queue is full: leave the requests outstanding, so the deadline moves them elsewhere.
                self.counters.dropped("server_queue_full", len(pairs), f"queue to {address} is full")

    def _receive(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._maintain()
            remaining = deadline - time.monotonic()
            wait_ms = max(0, int(min(remaining, self._check_interval()) * 1000))
            servers = list(self._servers.values())
            if len(servers) == 1:
                # One server: a receive with a timeout replaces poll, readiness check and receive.
                frames = receive_within(servers[0].socket, wait_ms)
                if frames is not None:
                    self._handle(servers[0], frames)
                    self._drain(servers[0])
            elif servers:
                events = dict(self._poller.poll(wait_ms))
                for server in servers:
                    if server.socket in events:
                        self._drain(server)
            elif wait_ms:
                time.sleep(wait_ms / 1000)
            if self._ready or time.monotonic() >= deadline:
                return

    def _check_interval(self) -> float:
        return min(self.config.request_timeout_s, self.config.resolve_interval_s) / 2

    def _drain(self, server: _Server) -> None:
        while has_message(server.socket):
            self._handle(server, server.socket.recv_multipart(copy=False))

    def _handle(self, server: _Server, frames: list[zmq.Frame]) -> None:
        try:
            pairs = parse_batch(wire.decode(frames), RESPONSE_TAG)
        except wire.WireError as exc:
            self.counters.garbage("undecodable", exc)
            return
        if isinstance(pairs, str):
            self.counters.garbage("not_a_response_batch", pairs)
            return
        server.quarantined_until = 0.0
        for request_id, payload in pairs:
            self._accept(request_id, payload)

    def _accept(self, request_id: int, payload: Any) -> None:
        if request_id not in self._payloads:
            if 0 < request_id < self._next_id:
                self.counters.dropped("duplicate", 1, f"second response to request {request_id}")
            else:
                self.counters.garbage("unknown_request_id", f"response to request {request_id}, never posted")
            return
        del self._payloads[request_id]
        owner = self._servers.get(self._owner.pop(request_id, ""))
        if owner is not None:
            owner.outstanding.pop(request_id, None)
        self.counters.add("received")
        self._ready[request_id] = payload


def IpInferenceClient(address: str | Sequence[str], config: InferenceStreamConfig | None = None,
                      **kwargs: Any) -> InferenceClient:
    """A client of the server(s) at fixed address(es)."""
    return InferenceClient([address] if isinstance(address, str) else list(address), config, **kwargs)


class NameResolvingInferenceClient(InferenceClient):
    """A client of every server registered under `root`; re-resolves every `resolve_interval_s` and on a missed deadline.

    Resolving runs in the background (`SubtreeView`): during a name-service outage the client goes on with the
    servers it knows.
    """

    def __init__(self, resolver: NameResolver, root: str, config: InferenceStreamConfig | None = None, *,
                 name: str = "inference", context: zmq.Context | None = None):
        config = config or InferenceStreamConfig()
        self._view = SubtreeView(resolver, root, config.resolve_interval_s)
        super().__init__(self._view.values(), config, name=name, context=context)

    def _refresh_servers(self, force: bool = False) -> None:
        if force:
            self._view.refresh()
        self._set_addresses(self._view.values())

    def _maintain(self) -> None:
        self._refresh_servers()
        super()._maintain()

    def close(self) -> None:
        self._view.close()
        super().close()
