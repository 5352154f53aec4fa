"""A client's link to one inference server: its DEALER socket, what it holds, and the state of its connection."""

from __future__ import annotations

import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from zrl.streams.curve import CurveKeys
from zrl.streams.sockets import SocketConfig, connect_monitored_socket, has_message

_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED


class ServerLink:
    """A DEALER connected to one server with ZMQ_IMMEDIATE, so nothing queues to it while it is unreachable.

    ZeroMQ reports the loss of the connection (the peer closed it, or missed heartbeats for `heartbeat_timeout_s`)
    on a monitor socket, which `connection_lost` reads.
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

    def connection_lost(self) -> bool:
        """Whether the connection was lost since the last call (ZeroMQ reconnects by itself)."""
        self._read_events()
        lost, self._lost = self._lost, False
        return lost

    def await_connection(self, until: float) -> None:
        """Wait, until time.monotonic() reaches `until`, for a connection to complete."""
        self._read_events()
        # With ZMQ_IMMEDIATE the socket has room only once a connection is complete.
        if self.socket.poll(max(0, int((until - time.monotonic()) * 1000)), zmq.POLLOUT):
            self.connected = True

    def _read_events(self) -> None:
        while has_message(self._monitor):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected = True
            elif event == zmq.EVENT_DISCONNECTED:
                self.connected = False
                self._lost = True

    def close(self) -> None:
        self.socket.disable_monitor()
        self._monitor.close(0)
        self.socket.close(0)
