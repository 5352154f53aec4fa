"""Sample producers: Ip (one consumer), RoundRobin (spread over consumers), Broadcast (every consumer gets
every sample) and NameResolving (spread over the consumers registered in the name service)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import zmq

from zrl import wire
from zrl.nameresolve import NameResolver, SubtreeView
from zrl.streams.counters import StreamCounters
from zrl.streams.curve import CurveKeys
from zrl.streams.encoding import encode_batch, refused_error
from zrl.streams.sample import SAMPLE_TAG, SampleStreamConfig, StreamFullError, approx_nbytes
from zrl.streams.sockets import connect_socket, send_frames

logger = logging.getLogger(__name__)


class SampleProducer:
    """Pushes samples to consumers, batching them until `batch_bytes` or `batch_max_samples` is reached.

    Call `flush()` at the end of a unit of work: buffered samples are sent only when a batch fills,
    on `flush()` and on `close()`. With `curve`, samples go only to consumers holding the trial's keys.
    """

    def __init__(self, addresses: Sequence[str], config: SampleStreamConfig | None = None, *,
                 broadcast: bool = False, name: str = "sample", context: zmq.Context | None = None,
                 curve: CurveKeys | None = None):
        self.config = config or SampleStreamConfig()
        self.broadcast = broadcast
        self._curve = curve
        self.counters = StreamCounters(name, logger)
        self._context = context or zmq.Context.instance()
        self._buffer: list[Any] = []
        self._buffer_bytes = 0
        self._addresses: list[str] = []
        # Round robin: one PUSH socket connected to every consumer (ZeroMQ spreads messages over those
        # with room). Broadcast: one PUSH socket per consumer.
        self._sockets: dict[str, zmq.Socket] = {}
        self._closed = False
        self._set_addresses(list(addresses))

    @property
    def addresses(self) -> list[str]:
        return list(self._addresses)

    def post(self, sample: Any, flush: bool = False) -> None:
        """Buffer `sample`; send the batch if it is full or `flush` is true."""
        self._buffer.append(sample)
        self._buffer_bytes += approx_nbytes(sample)
        if flush or self._buffer_bytes >= self.config.batch_bytes or len(self._buffer) >= self.config.batch_max_samples:
            self.flush()

    def post_many(self, samples: Iterable[Any]) -> None:
        for sample in samples:
            self.post(sample)

    def flush(self) -> None:
        """Send every buffered sample now (subject to the full-queue policy).

        Each sample ends in exactly one counter (per target where it reached one; see `zrl.streams.sample`). Samples
        that cannot be encoded are dropped and counted; after the others are sent, WireError names them. Under the
        "block" policy a target that has no room within `block_timeout_s` gets none of the batch, the other targets
        get it, and StreamFullError follows.
        """
        if not self._buffer:
            return
        posted = len(self._buffer)
        batch = encode_batch(SAMPLE_TAG, self._buffer)
        self._buffer, self._buffer_bytes = [], 0
        refused = [(f"sample {index} of {posted} in a batch", exc) for index, exc in batch.refused]
        if refused:
            self.counters.dropped("unencodable", len(refused), refused[0][0])
        full: StreamFullError | None = None
        if batch.frames is not None and self._within_limit(batch.frames, len(batch.items)):
            self._refresh_consumers()
            targets = self._targets()
            if not targets:
                self._no_consumer(len(batch.items))
            for target in targets:
                try:
                    delivered = self._send(target, batch.frames)
                except StreamFullError as exc:
                    self.counters.dropped("stream_full", len(batch.items), str(exc))
                    full = full or exc
                    continue
                if delivered:
                    self.counters.add("sent", len(batch.items))
                    self.counters.add("messages_sent")
                else:
                    self.counters.dropped("queue_full", len(batch.items),
                                          f"queue to {target} full ({self.config.sockets.send_hwm} messages)")
        if refused:
            raise refused_error(self.counters.stream, refused)
        if full is not None:
            raise full

    def _targets(self) -> list[str]:
        """Where a batch goes: the round-robin socket, or every consumer, waiting for one to appear under "block"."""
        if not self.broadcast:
            return ["*"]
        if self.config.full_policy == "block":
            deadline = time.monotonic() + self.config.block_timeout_s
            while not self._sockets and time.monotonic() < deadline:
                time.sleep(min(self.config.resolve_interval_s, 0.05))
                self._refresh_consumers()
        return list(self._sockets)

    def _no_consumer(self, samples: int) -> None:
        detail = f"a broadcast found no consumer of {self.counters.stream}"
        if self.config.full_policy == "drop":
            self.counters.dropped("no_consumer", samples, detail)
            return
        self.counters.dropped("stream_full", samples, detail)
        raise StreamFullError(f"sample stream {self.counters.stream}: {detail} within block_timeout_s="
                              f"{self.config.block_timeout_s}; the batch was dropped and counted as dropped.stream_full")

    def _within_limit(self, frames: list[wire.Frame], samples: int) -> bool:
        """Whether a message fits the consumers' size limit; one that does not is dropped and counted, as they would."""
        size = sum(len(frame) for frame in frames)
        if size <= self.config.sockets.message_limit:
            return True
        self.counters.dropped("too_large", samples, f"a batch of {size} bytes is over max_message_bytes="
                                                   f"{self.config.sockets.message_limit}")
        return False

    def as_dict(self) -> dict[str, int]:
        return self.counters.as_dict()

    def close(self, flush: bool = True) -> None:
        if self._closed:
            return
        try:
            if flush:
                self.flush()
        finally:
            self._closed = True
            for sock in self._sockets.values():
                sock.close(self.config.sockets.linger_ms)
            self._sockets.clear()

    def __enter__(self) -> SampleProducer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _refresh_consumers(self) -> None:
        """Hook for producers whose consumer set can change."""

    def _socket_for(self, target: str) -> zmq.Socket | None:
        if target == "*":
            return next(iter(self._sockets.values()), None)
        return self._sockets.get(target)

    def _send(self, target: str, frames: list[wire.Frame]) -> bool:
        sock = self._socket_for(target)
        if sock is not None:
            try:
                send_frames(sock, frames, zmq.NOBLOCK)
                return True
            except zmq.Again:
                pass
        if self.config.full_policy == "drop":
            return False
        deadline = time.monotonic() + self.config.block_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StreamFullError(
                    f"sample stream {self.counters.stream}: no room to send to {target if target != '*' else self._addresses} "
                    f"within block_timeout_s={self.config.block_timeout_s} (send_hwm={self.config.sockets.send_hwm}); "
                    f"the batch was dropped and counted as dropped.stream_full")
            if sock is not None:
                sock.poll(int(min(remaining, self.config.resolve_interval_s) * 1000) + 1, zmq.POLLOUT)
            else:
                time.sleep(min(remaining, self.config.resolve_interval_s, 0.05))
            self._refresh_consumers()
            sock = self._socket_for(target)
            if sock is None:
                continue
            try:
                send_frames(sock, frames, zmq.NOBLOCK)
                return True
            except zmq.Again:
                continue

    def _set_addresses(self, addresses: list[str]) -> None:
        added = [address for address in addresses if address not in self._addresses]
        removed = [address for address in self._addresses if address not in addresses]
        if not added and not removed:
            return
        options = self.config.sockets
        self._addresses = [address for address in self._addresses if address not in removed] + added
        if self.broadcast:
            for address in removed:
                self._sockets.pop(address).close(options.linger_ms)
            for address in added:
                self._sockets[address] = connect_socket(self._context, zmq.PUSH, options, address, curve=self._curve)
        else:
            if not self._sockets:
                # IMMEDIATE: queue only to consumers whose connection is up, so a dead one gets no share.
                self._sockets["*"] = connect_socket(self._context, zmq.PUSH, options, added[0], immediate=True,
                                                    curve=self._curve)
                added = added[1:]
            sock = self._sockets["*"]
            for address in removed:
                sock.disconnect(address)
            for address in added:
                sock.connect(address)


def IpSampleProducer(address: str, config: SampleStreamConfig | None = None, **kwargs: Any) -> SampleProducer:
    """A producer that sends to the one consumer bound at `address`."""
    return SampleProducer([address], config, **kwargs)


def RoundRobinSampleProducer(addresses: Sequence[str], config: SampleStreamConfig | None = None,
                             **kwargs: Any) -> SampleProducer:
    """A producer that spreads batches over the consumers at `addresses`, skipping those whose queue is full."""
    return SampleProducer(addresses, config, broadcast=False, **kwargs)


def BroadcastSampleProducer(addresses: Sequence[str], config: SampleStreamConfig | None = None,
                            **kwargs: Any) -> SampleProducer:
    """A producer that sends every sample to every consumer at `addresses`."""
    return SampleProducer(addresses, config, broadcast=True, **kwargs)


class NameResolvingSampleProducer(SampleProducer):
    """Spreads samples over (or broadcasts them to) the consumers registered under `root` in the name service.

    Resolving runs in the background (`SubtreeView`): during a name-service outage the producer goes on with the
    consumers it knows. In round robin, a consumer whose name vanishes stays connected for `keepalive_ttl_s`: a name
    service that restarted empty lists it again once it re-registers, and disconnecting it in between would drop the
    batches still on their way to it, which were counted as sent. (A consumer that is really gone gets nothing
    meanwhile: round robin sends only over live connections.)
    """

    def __init__(self, resolver: NameResolver, root: str, config: SampleStreamConfig | None = None, *,
                 broadcast: bool = False, name: str = "sample", context: zmq.Context | None = None,
                 curve: CurveKeys | None = None):
        config = config or SampleStreamConfig()
        self._view = SubtreeView(resolver, root, config.resolve_interval_s)
        self._vanished_at: dict[str, float] = {}
        super().__init__(self._view.values(), config, broadcast=broadcast, name=name, context=context, curve=curve)

    def _refresh_consumers(self) -> None:
        self._set_addresses(self._registered_or_recently_vanished(self._view.values()))

    def _registered_or_recently_vanished(self, registered: list[str]) -> list[str]:
        if self.broadcast:
            return registered
        now = time.monotonic()
        vanished = {address: self._vanished_at.get(address, now) for address in self._addresses
                    if address not in registered}
        self._vanished_at = {address: since for address, since in vanished.items()
                             if now - since < self.config.keepalive_ttl_s}
        return registered + list(self._vanished_at)

    def close(self, flush: bool = True) -> None:
        try:
            super().close(flush)
        finally:
            self._view.close()
