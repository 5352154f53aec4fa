"""A client's link to one inference server: its DEALER socket, what it holds, and the state of its connection."""

from __future__ import annotations

import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from zrl.streams.curve import CurveKeys
from zrl.streams.curve_guard import HANDSHAKE_FAILED, handshake_refusal
from zrl.streams.sockets import SocketConfig, connect_monitored_socket, has_message

_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | HANDSHAKE_FAILED


class ServerLink:
    """A DEALER connected to one server with ZMQ_IMMEDIATE, so nothing queues to it while it is unreachable.

    ZeroMQ reports the loss of the connection (the peer closed it, or missed heartbeats for `heartbeat_timeout_s`)
    on a monitor socket, which `connection_lost` reads; it also reads each failed handshake (say, with an address
    that someone without the trial's keys registered), which `refusals` hands out.
    """

    def __init__(self, context: zmq.Context, config: SocketConfig, address: str, curve: CurveKeys | None = None):
        self.address = address
        self.socket, self._monitor = connect_monitored_socket(context, zmq.DEALER, config, address, _EVENTS,
                                                              immediate=True, curve=curve)
        self.created_at = time.monotonic()
        self.connected = False
        self._lost = False
        self.outstanding: dict[int, float] = {}
        """request id -> time.monotonic() when it was sent to this server."""
        self.quarantined_until = 0.0
        self._refusals: list[tuple[str, str]] = []

    def connection_lost(self) -> bool:
        """Whether the connection was lost since the last call (ZeroMQ reconnects by itself)."""
        self._read_events()
        lost, self._lost = self._lost, False
        return lost

    def refusals(self) -> list[tuple[str, str]]:
        """(kind, detail) of each failed handshake with this server that `connection_lost` has read since the last
        call."""
        refusals, self._refusals = self._refusals, []
        return refusals

    def await_connection(self, until: float) -> None:
        """Wait, until time.monotonic() reaches `until`, for a connection to complete."""
        self._read_events()
        # With ZMQ_IMMEDIATE the socket has room only once a connection is complete.
        if self.socket.poll(max(0, int((until - time.monotonic()) * 1000)), zmq.POLLOUT):
            self.connected = True

    def _read_events(self) -> None:
        while has_message(self._monitor):
            message = recv_monitor_message(self._monitor)
            event = message["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected = True
            elif event == zmq.EVENT_DISCONNECTED:
                self.connected = False
                self._lost = True
            elif event & HANDSHAKE_FAILED:
                self._refusals.append(handshake_refusal(event, message["value"]))

    def close(self) -> None:
        self.socket.disable_monitor()
        self._monitor.close(0)
        self.socket.close(0)
