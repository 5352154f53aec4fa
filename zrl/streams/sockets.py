"""Socket set-up shared by every stream: explicit high-water marks, a message size limit, drop accounting."""

from __future__ import annotations

import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import zmq

from zrl.streams.counters import StreamCounters
from zrl.streams.curve import CurveKeys, secure_client, secure_server

_MAX_HEARTBEAT_TTL_S = 6553.0  # ZMQ_HEARTBEAT_TTL travels in tenths of a second in a 16-bit field


@dataclass(frozen=True)
class SocketConfig:
    """Options applied to every socket of a stream."""

    send_hwm: int = 1000
    """Messages queued for sending per peer before the queue counts as full."""
    recv_hwm: int = 1000
    """Messages queued on receipt per peer before the sender is held back."""
    max_message_bytes: int | None = None
    """Largest message a socket takes, all frames together; a larger one is dropped and counted as
    `garbage.too_large` (None: the default of the stream kind). ZeroMQ drops the connection of a peer that sends
    one frame over it; a multipart message is read whole before its sum is checked."""
    bind_host: str = "127.0.0.1"
    """Interface that servers and consumers bind to ('*' for all interfaces)."""
    advertise_host: str | None = None
    """Host written into the name service for peers to connect to; None means `bind_host`."""
    linger_ms: int = 1000
    """How long unsent messages outlive close() while the ZeroMQ context terminates (-1: until sent)."""
    heartbeat_interval_s: float = 1.0
    """How often ZeroMQ pings each peer of a socket (ZMQ_HEARTBEAT_IVL)."""
    heartbeat_timeout_s: float = 5.0
    """A connection whose peer answers no ping for this long is closed (ZMQ_HEARTBEAT_TIMEOUT, and _TTL for the
    peer's side), so a dead or frozen peer is noticed even while no message is due."""

    def __post_init__(self) -> None:
        for name in ("send_hwm", "recv_hwm", "max_message_bytes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"SocketConfig.{name} must be > 0, got {value!r}")
        if not 0.001 <= self.heartbeat_interval_s < self.heartbeat_timeout_s <= _MAX_HEARTBEAT_TTL_S:
            raise ValueError(f"SocketConfig needs 0.001 <= heartbeat_interval_s < heartbeat_timeout_s <= "
                             f"{_MAX_HEARTBEAT_TTL_S}, got {self.heartbeat_interval_s!r} and {self.heartbeat_timeout_s!r}")

    def with_message_limit(self, default: int) -> SocketConfig:
        """These options, with `default` as `max_message_bytes` unless one is set."""
        return self if self.max_message_bytes is not None else replace(self, max_message_bytes=default)

    @property
    def message_limit(self) -> int:
        if self.max_message_bytes is None:
            raise ValueError("SocketConfig.max_message_bytes is None: set a limit, or pass the options inside a "
                             "stream's config, which sets the default of its kind")
        return self.max_message_bytes


def _apply(sock: zmq.Socket, config: SocketConfig) -> None:
    sock.setsockopt(zmq.SNDHWM, config.send_hwm)
    sock.setsockopt(zmq.RCVHWM, config.recv_hwm)
    sock.setsockopt(zmq.LINGER, config.linger_ms)
    sock.setsockopt(zmq.MAXMSGSIZE, config.message_limit)
    sock.setsockopt(zmq.HEARTBEAT_IVL, int(config.heartbeat_interval_s * 1000))
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(config.heartbeat_timeout_s * 1000))
    sock.setsockopt(zmq.HEARTBEAT_TTL, int(config.heartbeat_timeout_s * 1000))


def bind_socket(context: zmq.Context, socket_type: int, config: SocketConfig, address: str | None = None, *,
                counters: StreamCounters, curve: CurveKeys | None = None) -> tuple[zmq.Socket, str]:
    """Bind a new socket to `address` (default: a free TCP port on `bind_host`); return it and its connect address.

    With `curve`, the socket is a CURVE server that lets in only the trial's clients, and counts the connections it
    refuses in `counters` (`zrl.streams.curve`).
    """
    sock = context.socket(socket_type)
    _apply(sock, config)
    if curve is not None:
        secure_server(sock, curve, counters)
    try:
        sock.bind(address or f"tcp://{config.bind_host}:*")
    except zmq.ZMQError as exc:
        sock.close(0)
        raise OSError(f"cannot bind {zmq_type_name(socket_type)} socket to {address or config.bind_host}: {exc}") from exc
    endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    if config.advertise_host is not None and endpoint.startswith("tcp://"):
        endpoint = f"tcp://{config.advertise_host}:{endpoint.rsplit(':', 1)[1]}"
    elif endpoint.startswith("tcp://0.0.0.0:"):
        raise ValueError("SocketConfig.advertise_host must be set when binding to all interfaces")
    return sock, endpoint


def connect_socket(context: zmq.Context, socket_type: int, config: SocketConfig, address: str,
                   immediate: bool = False, curve: CurveKeys | None = None) -> zmq.Socket:
    """Create a socket of `socket_type` connected to `address` (`immediate`: queue only to completed connections;
    `curve`: connect only to a server holding the trial's keys, as a client holding them)."""
    sock = _unconnected_socket(context, socket_type, config, immediate, curve)
    sock.connect(address)
    return sock


def connect_monitored_socket(context: zmq.Context, socket_type: int, config: SocketConfig, address: str,
                             events: int, immediate: bool = False,
                             curve: CurveKeys | None = None) -> tuple[zmq.Socket, zmq.Socket]:
    """`connect_socket`, and a monitor socket for `events`, attached before the connection starts so it misses none."""
    sock = _unconnected_socket(context, socket_type, config, immediate, curve)
    monitor = sock.get_monitor_socket(events)
    sock.connect(address)
    return sock, monitor


def _unconnected_socket(context: zmq.Context, socket_type: int, config: SocketConfig, immediate: bool,
                        curve: CurveKeys | None) -> zmq.Socket:
    sock = context.socket(socket_type)
    _apply(sock, config)
    if curve is not None:
        secure_client(sock, curve)
    if immediate:
        sock.setsockopt(zmq.IMMEDIATE, 1)
    return sock


def zmq_type_name(socket_type: int) -> str:
    return {zmq.PUSH: "PUSH", zmq.PULL: "PULL", zmq.ROUTER: "ROUTER", zmq.DEALER: "DEALER"}.get(socket_type, str(socket_type))


def oversized(frames: Sequence[Any], config: SocketConfig, counters: StreamCounters) -> bool:
    """Whether a received message is over `max_message_bytes`, all frames together; if so it is counted as garbage."""
    size = sum(len(frame) for frame in frames)
    if size <= config.message_limit:
        return False
    counters.garbage("too_large", f"{size} bytes in {len(frames)} frames, over max_message_bytes={config.message_limit}")
    return True


# Messages read in a row before checking the clock again, so a flood of messages cannot hold a receive past its deadline.
_MESSAGES_PER_CLOCK_CHECK = 64
# Plain ints: pyzmq's enum constants make every `&` and option look-up build an enum member.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_RCVTIMEO = int(zmq.RCVTIMEO)
_SNDMORE = int(zmq.SNDMORE)
_MAX_TIMEOUT_MS = 2**31 - 1  # ZMQ_RCVTIMEO is a C int; callers loop on longer waits


EndpointT = TypeVar("EndpointT", bound="BoundEndpoint")
# The ZMQ_RCVTIMEO that `receive_within` last set on each socket; a socket that is gone drops out.
_receive_timeouts: weakref.WeakKeyDictionary[zmq.Socket, int] = weakref.WeakKeyDictionary()


class BoundEndpoint:
    """The shared tail of a stream's bound side: counters, closing its socket once, and use as a context manager."""

    counters: StreamCounters
    _socket: zmq.Socket
    _closed: bool = False

    def as_dict(self) -> dict[str, int]:
        return self.counters.as_dict()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._socket.close(0)

    def __enter__(self: EndpointT) -> EndpointT:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def receive_batch(sock: zmq.Socket, ready: deque[Any], wanted: int, timeout: float,
                  accept: Callable[[list[zmq.Frame]], None]) -> list[Any]:
    """Pop up to `wanted` items from `ready`, first reading messages from `sock` into it via `accept`.

    Waits at most `timeout` seconds for the first item; once any item is ready it returns what has arrived.
    Messages that add no item (garbage, empty batches) are read only until `timeout` has passed.
    """
    if wanted <= 0:
        raise ValueError(f"the batch size must be > 0, got {wanted}")
    deadline = time.monotonic() + timeout
    while len(ready) < wanted:
        read = 0
        while len(ready) < wanted and has_message(sock):
            accept(receive_frames(sock))
            read += 1
            if read % _MESSAGES_PER_CLOCK_CHECK == 0 and time.monotonic() >= deadline:
                break
        remaining = deadline - time.monotonic()
        if remaining <= 0 or (ready and not read):
            break
        if not read:
            frames = receive_within(sock, int(remaining * 1000) + 1)
            if frames is not None:
                accept(frames)
    return [ready.popleft() for _ in range(min(wanted, len(ready)))]


def receive_within(sock: zmq.Socket, timeout_ms: int) -> list[zmq.Frame] | None:
    """Receive the next message, waiting at most `timeout_ms`; None if none came.

    A blocking receive with a timeout is one call into ZeroMQ, where poll, readiness check and receive
    are three; the timeout option is only set when it changes (remembered here: reading it back costs a call).
    """
    timeout_ms = min(timeout_ms, _MAX_TIMEOUT_MS)
    if _receive_timeouts.get(sock) != timeout_ms:
        sock.setsockopt(_RCVTIMEO, timeout_ms)
        _receive_timeouts[sock] = timeout_ms
    try:
        return receive_frames(sock)
    except zmq.Again:
        return None


def receive_frames(sock: zmq.Socket, flags: int = 0) -> list[zmq.Frame]:
    """`recv_multipart(flags, copy=False)`, asking each frame whether more follow instead of the socket.

    The frames of a message arrive together, so only the first receive can wait or raise zmq.Again.
    """
    frame = sock.recv(flags, copy=False)
    frames = [frame]
    while frame.more:
        frame = sock.recv(flags, copy=False)
        frames.append(frame)
    return frames


def has_message(sock: zmq.Socket) -> bool:
    """Whether a message is waiting; cheaper than a non-blocking recv that raises zmq.Again."""
    return bool(sock.getsockopt(_EVENTS) & _POLLIN)


def send_frames(sock: zmq.Socket, frames: list[Any], flags: int = 0) -> None:
    """Send wire frames, copying only messages without array buffers (cheaper than a zero-copy frame).

    The frames of a message are queued together, so only the first send can raise zmq.Again.
    """
    copy = len(frames) <= 2 and len(frames[-1]) < 65536
    flags = int(flags)  # pyzmq's flag enums make every `|` build an enum member
    for frame in frames[:-1]:
        sock.send(frame, flags | _SNDMORE, copy=copy)
    sock.send(frames[-1], flags, copy=copy)
