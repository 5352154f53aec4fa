"""The guard of a ZeroMQ context's CURVE servers: its ZAP handler, and the count of the connections each refused.

ZeroMQ asks one ZAP handler per context (RFC 27, at `ZAP_ENDPOINT`) whether to let in a client that completed the
CURVE handshake with a server socket. Each guarded socket gets a ZAP domain of its own, which names the one client
public key it accepts and the counters of its stream; so sockets of several trials and streams can share a context.
The guard also reads each guarded socket's monitor for handshakes that failed before ZAP was asked. Kinds of refusal,
counted in the socket's `StreamCounters` as `refused.<kind>` (and in their sum `refused`), the first of each logged:

    not_curve     the client does not use CURVE (a plain ZeroMQ socket)
    server_key    the client uses CURVE with another server key: it does not hold the trial's keys
    client_key    the client completed the handshake with a client key that is not the trial's (ZAP said no)
    handshake     any other failed handshake: a malformed ZMTP command, or a handshake that broke off or timed out
                  (a plain client that sees the mismatch first hangs up: it may show as this instead of not_curve)

A peer whose first bytes are no ZMTP 3 greeting (say, an HTTP request) is disconnected without a handshake event, so
it is not counted. One thread per context serves the ZAP socket and the monitors; it ends when the context is
terminated. A guarded socket lets in no client at all while no ZAP handler answers (`ZMQ_ZAP_ENFORCE_DOMAIN`): it
fails closed.
"""

from __future__ import annotations

import errno
import itertools
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import recv_monitor_message

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_MONITORED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
              | zmq.EVENT_MONITOR_STOPPED)
_PROTOCOL_ERRORS = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: ("not_curve", "one peer uses CURVE, the other does not"),
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: ("server_key", "the client's server key is not the server's"),
}
_WAKE_MS = 50
"""How often the guard thread looks for newly guarded sockets."""


@dataclass(frozen=True)
class _Guarded:
    client_key: bytes
    """The one client public key (32 bytes) the socket lets in."""
    refused: Callable[[str, str], None]
    """Counts a refusal: (kind, detail); `StreamCounters.refused` of the socket's stream."""


class CurveGuard:
    """The ZAP handler and refusal counter of one ZeroMQ context; get it with `guard_of(context)`."""

    def __init__(self, context: zmq.Context):
        self._context = context
        self._domains: dict[bytes, _Guarded] = {}
        """ZAP domain -> what its socket accepts; written by `protect`, read and pruned by the guard thread."""
        self._new_monitors: queue.SimpleQueue[tuple[zmq.Socket, bytes]] = queue.SimpleQueue()
        self._ids = itertools.count()
        self._ready = threading.Event()
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._serve, name="zrl-curve-guard", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def protect(self, sock: zmq.Socket, server_secret: bytes, client_key: bytes,
                refused: Callable[[str, str], None]) -> None:
        """Make `sock` (not yet bound) a CURVE server with `server_secret` that lets in only `client_key`; each
        refusal is reported to `refused(kind, detail)`, from the guard's thread."""
        domain = f"zrl.{next(self._ids)}".encode()
        self._domains[domain] = _Guarded(client_key, refused)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, server_secret)
        sock.setsockopt(zmq.ZAP_DOMAIN, domain)
        # Without a ZAP handler ZeroMQ would let in any CURVE client; with this, it lets in none (fails closed).
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        # Attached before the socket binds, so no refusal goes unseen; read by the guard thread from now on.
        self._new_monitors.put((sock.get_monitor_socket(_MONITORED), domain))

    # ---- the guard thread ----

    def _serve(self) -> None:
        zap = self._context.socket(zmq.ROUTER)
        zap.setsockopt(zmq.LINGER, 0)
        try:
            zap.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            zap.close()
            self._error = RuntimeError(f"cannot serve ZeroMQ authentication (ZAP) at {ZAP_ENDPOINT} in this context: "
                                       f"{exc}; another ZAP handler (such as zmq.auth) serves it")
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        poller.register(zap, zmq.POLLIN)
        monitors: dict[zmq.Socket, bytes] = {}
        try:
            while not zap.closed:
                self._take_new_monitors(poller, monitors)
                try:
                    for sock, _ in poller.poll(_WAKE_MS):
                        if sock is zap:
                            self._answer(zap)
                        else:
                            self._read_monitor(sock, monitors, poller)
                except zmq.ContextTerminated:
                    return  # nothing is left to guard
                except zmq.ZMQError:
                    # A socket closed under the guard (Context.destroy closes every socket from its own thread).
                    for monitor in [monitor for monitor in monitors if monitor.closed]:
                        poller.unregister(monitor)
                        self._domains.pop(monitors.pop(monitor), None)
        finally:
            self._take_new_monitors(None, monitors)
            for monitor in monitors:
                monitor.close(0)
            zap.close(0)
            with _guards_lock:
                if _guards.get(self._context) is self:
                    del _guards[self._context]

    def _take_new_monitors(self, poller: zmq.Poller | None, monitors: dict[zmq.Socket, bytes]) -> None:
        while True:
            try:
                monitor, domain = self._new_monitors.get_nowait()
            except queue.Empty:
                return
            monitors[monitor] = domain
            if poller is not None:
                poller.register(monitor, zmq.POLLIN)

    def _answer(self, zap: zmq.Socket) -> None:
        """Answer one ZAP request: 200 for the socket's client key, 400 (counted) for any other."""
        frames = zap.recv_multipart()
        if len(frames) < 8:
            return  # only libzmq writes to this inproc socket; a request it cannot have sent is ignored
        identity, _, version, request_id, domain, address, _, mechanism, *credentials = frames
        guarded = self._domains.get(domain)
        allowed = (version == b"1.0" and mechanism == b"CURVE" and guarded is not None
                   and credentials[:1] == [guarded.client_key])
        status = (b"200", b"OK") if allowed else (b"400", b"not a client of this trial")
        zap.send_multipart([identity, b"", b"1.0", request_id, *status, b"", b""])
        if not allowed and guarded is not None:
            guarded.refused("client_key", f"a client at {address.decode(errors='replace')} completed "
                                                   "the CURVE handshake with a key that is not the trial's")

    def _read_monitor(self, monitor: zmq.Socket, monitors: dict[zmq.Socket, bytes], poller: zmq.Poller) -> None:
        domain = monitors[monitor]
        while monitor.poll(0):
            event = recv_monitor_message(monitor)
            if event["event"] == zmq.EVENT_MONITOR_STOPPED:  # its socket was closed
                poller.unregister(monitor)
                monitor.close(0)
                del monitors[monitor]
                self._domains.pop(domain, None)
                return
            guarded = self._domains.get(domain)
            if guarded is not None:
                kind, detail = handshake_refusal(event["event"], event["value"])
                guarded.refused(kind, f"{detail} (on {event['endpoint'].decode(errors='replace')})")


HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
"""The monitor events of a failed handshake, on either end of a connection."""


def handshake_refusal(event: int, value: int) -> tuple[str, str]:
    """The kind and description of a failed handshake that a monitor reported (seen from either end: on a client,
    `not_curve` and `server_key` say the server does not use CURVE or does not hold the trial's server key)."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return "client_key", f"the server refused this client's key (ZAP status {value})"
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return "handshake", f"a handshake broke off or timed out ({errno.errorcode.get(value, value)})"
    return _PROTOCOL_ERRORS.get(value, ("handshake", f"a malformed handshake (ZMTP protocol error {value:#x})"))


# ZeroMQ serves one ZAP handler per context, so there is one guard per context, made when a first socket needs it.
_guards: dict[zmq.Context, CurveGuard] = {}
_guards_lock = threading.Lock()


def guard_of(context: zmq.Context) -> CurveGuard:
    """The guard of `context`, started on first use (and again if the context's last one ended)."""
    with _guards_lock:
        guard = _guards.get(context)
        if guard is None or not guard.alive:
            guard = _guards[context] = CurveGuard(context)
        return guard
