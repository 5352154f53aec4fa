"""Inference clients over ZeroMQ: Ip (fixed servers) and NameResolving (servers found in the name service).

Each client holds one DEALER socket per server, so it knows which server holds which request and can
re-send a dead server's requests elsewhere (see `zrl.streams.inference` for the protocol).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from typing import Any

import zmq

from zrl import wire
from zrl.nameresolve import NameResolver, SubtreeView
from zrl.streams.counters import StreamCounters
from zrl.streams.curve import CurveKeys
from zrl.streams.encoding import encode_batch, refused_error
from zrl.streams.inference import REQUEST_TAG, RESPONSE_TAG, InferenceStreamConfig, parse_batch
from zrl.streams.inference_base import InferenceClientBase
from zrl.streams.inference_link import ServerLink
from zrl.streams.sockets import (
    has_message,
    oversized,
    receive_frames,
    receive_within,
    send_frames,
)

logger = logging.getLogger(__name__)

_HELD_RETRY_S = 0.01
_CANCELLED_REMEMBERED = 65536


class InferenceClient(InferenceClientBase):
    """Sends requests to the servers at `addresses`, spreading them by fewest outstanding requests; with `curve`,
    only to servers holding the trial's keys."""

    def __init__(self, addresses: Sequence[str], config: InferenceStreamConfig | None = None, *,
                 name: str = "inference", context: zmq.Context | None = None, curve: CurveKeys | None = None):
        super().__init__(StreamCounters(name, logger))
        self.config = config or InferenceStreamConfig()
        self._context = context or zmq.Context.instance()
        self._curve = curve
        self._servers: dict[str, ServerLink] = {}
        self._payloads: dict[int, Any] = {}
        self._owner: dict[int, str] = {}
        self._cancelled: dict[int, None] = {}
        """The latest cancelled request ids (oldest first), to tell a late response to one from a duplicate."""
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
            server.close()
        self._servers.clear()

    def _forget(self, ids: set[int]) -> set[int]:
        forgotten = {request_id for request_id in ids if request_id in self._payloads}
        for request_id in forgotten:
            del self._payloads[request_id]
            server = self._servers.get(self._owner.pop(request_id, ""))
            if server is not None:
                server.outstanding.pop(request_id, None)
            self._cancelled[request_id] = None
        for request_id in list(itertools.islice(self._cancelled, max(0, len(self._cancelled) - _CANCELLED_REMEMBERED))):
            del self._cancelled[request_id]
        return forgotten

    def _describe(self) -> str:
        servers = ", ".join(f"{server.address}: {len(server.outstanding)} outstanding" for server in self._servers.values())
        return f"{len(self._queued)} not yet sent; servers: {servers or 'none known'}"

    def _set_addresses(self, addresses: list[str]) -> None:
        for address in [address for address in self._servers if address not in addresses]:
            server = self._servers.pop(address)
            self._poller.unregister(server.socket)
            server.close()
            self._requeue(server, list(server.outstanding), f"server {address} left the name service")
        for address in addresses:
            if address not in self._servers:
                server = ServerLink(self._context, self.config.sockets, address, self._curve)
                self._servers[address] = server
                self._poller.register(server.socket, zmq.POLLIN)

    def _requeue(self, server: ServerLink, ids: list[int], reason: str) -> None:
        """Take `ids` from `server` and queue them to be sent again, first in line, with the same ids."""
        if not ids:
            return
        ids = sorted(ids)
        for request_id in ids:
            del server.outstanding[request_id]
            self._owner.pop(request_id, None)
        self.counters.add("resent", len(ids))
        logger.warning("inference stream %s: re-sending %d request(s) elsewhere: %s",
                       self.counters.stream, len(ids), reason)
        self._queued[:0] = [(request_id, self._payloads[request_id]) for request_id in ids]

    def _refresh_servers(self, force: bool = False) -> None:
        """Hook for clients whose server set can change."""

    def _maintain(self) -> None:
        for server in list(self._servers.values()):
            lost = server.connection_lost()
            for kind, detail in server.refusals():
                self.counters.refused(kind, f"server {server.address}: {detail}")
            if lost:
                # Its requests went with the connection: a new one gets a new identity, so no answer can come back.
                self._requeue(server, list(server.outstanding), f"lost the connection to server {server.address} "
                              f"(closed, or no heartbeat for {self.config.sockets.heartbeat_timeout_s} s)")
        now = time.monotonic()
        if now < self._next_deadline_check:
            self._flush()
            return
        # Scanning every outstanding request costs more than a round trip once many are in flight, so
        # it runs at most every check interval: a late server is still found within one interval.
        self._next_deadline_check = now + self._check_interval()
        timeout = self.config.request_timeout_s
        late = {address: [request_id for request_id, sent_at in server.outstanding.items() if now - sent_at > timeout]
                for address, server in self._servers.items()}
        late = {address: ids for address, ids in late.items() if ids}
        if late:
            self._refresh_servers(force=True)
        for address, ids in late.items():
            server = self._servers.get(address)
            if server is not None:
                server.quarantined_until = now + self.config.quarantine_s
                self._requeue(server, ids, f"server {server.address} missed the {timeout} s deadline")
        self._flush()

    def _pick(self, now: float, load: dict[str, int], skip: set[str] | frozenset[str] = frozenset()) -> str | None:
        """The server to take the next request given each one's `load`: the least loaded, quarantined ones last."""
        candidates = [address for address in self._servers if address not in skip]
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        healthy = [address for address in candidates if self._servers[address].quarantined_until <= now]
        return min(healthy or candidates, key=load.__getitem__)

    def _flush(self) -> None:
        if not self._queued:
            return
        self._refresh_servers()
        if not self._servers:
            return
        for server in self._servers.values():
            if not server.connected:
                # Once per server: give a server found moments ago the time to connect, or it would get no requests.
                server.await_connection(server.created_at + self.config.connect_timeout_s)
        now = time.monotonic()
        load = {address: len(server.outstanding) for address, server in self._servers.items()}
        batches: dict[str, list[list[Any]]] = {}
        for request_id, payload in self._queued:
            address = self._pick(now, load)
            assert address is not None
            load[address] += 1
            batches.setdefault(address, []).append([request_id, payload])
        self._queued.clear()
        refused: list[tuple[str, wire.WireError]] = []
        full: set[str] = set()
        held: list[tuple[int, Any]] = []
        for address, pairs in batches.items():
            batch = encode_batch(REQUEST_TAG, pairs)
            refused += [(f"request {pairs[index][0]}", exc) for index, exc in batch.refused]
            if batch.frames is not None and not self._send(address, batch.items, batch.frames, now, load, full):
                held += [(request_id, payload) for request_id, payload in batch.items]
        # Requests that found every queue full wait, first in line, for the next flush.
        self._payloads.update(held)
        self._queued[:0] = held
        if refused:
            raise refused_error(self.counters.stream, refused)

    def _send(self, address: str, pairs: list[list[Any]], frames: list[wire.Frame], now: float,
              load: dict[str, int], full: set[str]) -> bool:
        """Send a batch to `address`, or if its queue is `full`, to another server at once; False if all are full."""
        candidate: str | None = address
        while candidate is not None:
            server = self._servers[candidate]
            try:
                send_frames(server.socket, frames, zmq.NOBLOCK)
            except zmq.Again:
                # A full queue is back-pressure, not a late server: no deadline and no quarantine.
                full.add(candidate)
                self.counters.add("queue_full", len(pairs))
                candidate = self._pick(now, load, full)
                continue
            for request_id, payload in pairs:
                self._payloads[request_id] = payload
                self._owner[request_id] = candidate
                server.outstanding[request_id] = now
            self.counters.add("sent", len(pairs))
            return True
        return False

    def _receive(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._maintain()
            remaining = deadline - time.monotonic()
            # Requests held back by full queues are retried soon, as room appears without any message arriving.
            interval = _HELD_RETRY_S if self._queued else self._check_interval()
            wait_ms = max(0, int(min(remaining, interval) * 1000))
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

    def _drain(self, server: ServerLink) -> None:
        while has_message(server.socket):
            self._handle(server, receive_frames(server.socket))

    def _handle(self, server: ServerLink, frames: list[zmq.Frame]) -> None:
        if oversized(frames, self.config.sockets, self.counters):
            return
        try:
            pairs = parse_batch(wire.decode(frames), RESPONSE_TAG)
        except wire.WireError as exc:
            self.counters.garbage("undecodable", exc)
            return
        if isinstance(pairs, str):
            self.counters.garbage("not_a_response_batch", pairs)
            return
        now = time.monotonic()
        fresh = [self._accept(server, request_id, payload, now) for request_id, payload in pairs]
        if any(fresh):
            server.quarantined_until = 0.0

    def _accept(self, server: ServerLink, request_id: int, payload: Any, now: float) -> bool:
        """Take a response from `server`; return whether it answers a request the server holds within its deadline."""
        if request_id not in self._payloads:
            if request_id in self._cancelled:
                del self._cancelled[request_id]
                self.counters.dropped("cancelled_response", 1, f"response to request {request_id}, which was cancelled")
            elif 0 < request_id < self._next_id:
                self.counters.dropped("duplicate", 1, f"second response to request {request_id}")
            else:
                self.counters.garbage("unknown_request_id", f"response to request {request_id}, never posted")
            return False
        del self._payloads[request_id]
        owner = self._servers.get(self._owner.pop(request_id, ""))
        if owner is None:
            # Answered late while queued to be re-sent: it must not be sent again.
            self._queued = [queued for queued in self._queued if queued[0] != request_id]
        sent_at = owner.outstanding.pop(request_id, None) if owner is not None else None
        self.counters.add("received")
        self._ready[request_id] = payload
        return owner is server and sent_at is not None and now - sent_at <= self.config.request_timeout_s


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
                 name: str = "inference", context: zmq.Context | None = None, curve: CurveKeys | None = None):
        config = config or InferenceStreamConfig()
        self._view = SubtreeView(resolver, root, config.resolve_interval_s)
        super().__init__(self._view.values(), config, name=name, context=context, curve=curve)

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
