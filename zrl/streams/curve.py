"""ZeroMQ CURVE on a trial's sockets: every connection encrypted, and made only between holders of the trial's keys.

Every process of a trial derives the same two keypairs from the trial's control key (`CurveKeys.derive`; the key
reaches a process as `zrl.streams.control_key_file` describes): one for servers, every socket that binds (inference
servers, sample consumers, the workers' control sockets), and one for clients, every socket that connects.

- A bound socket takes the server secret key (`secure_server`). The ZAP handler of its ZeroMQ context
  (`zrl.streams.curve_guard`) lets in only a client that proves it holds the trial's client secret key, and the
  connections it refuses are counted in the socket's stream counters (`refused.<kind>`).
- A connecting socket takes the client keypair and the server public key (`secure_client`), so it completes a
  connection only to a server that holds the trial's server secret key.

No key is written to the name service: a client trusts a server for its key, not for its name-service entry, so an
address registered by someone without the trial's key leads to a handshake that fails, never to a peer that takes
requests or samples. The secret keys, like the control key, are in no argv, log or file of the run but the key file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import zmq
from zmq.utils import z85

from zrl.streams.control_auth import ControlKey
from zrl.streams.curve_guard import guard_of

if TYPE_CHECKING:
    from zrl.streams.counters import StreamCounters

@dataclass(frozen=True, repr=False)
class CurveKeys:
    """A trial's server and client CURVE keypairs, Z85-encoded (40 bytes each). Its repr shows no secret."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def derive(cls, key: ControlKey) -> CurveKeys:
        """The keypairs of the trial whose control key is `key`; every holder of the key derives the same ones."""
        require_curve()
        server_secret = z85.encode(key.derive("curve server secret key"))
        client_secret = z85.encode(key.derive("curve client secret key"))
        return cls(zmq.curve_public(server_secret), server_secret, zmq.curve_public(client_secret), client_secret)

    def __repr__(self) -> str:
        return (f"CurveKeys(server_public={self.server_public.decode()}, client_public={self.client_public.decode()}, "
                "secret keys ***)")


def require_curve() -> None:
    """Raise RuntimeError when the ZeroMQ library in use was built without CURVE."""
    if not zmq.has("curve"):
        raise RuntimeError(f"ZeroMQ CURVE is not available: libzmq {zmq.zmq_version()} of pyzmq {zmq.__version__} was "
                           "built without it; install a pyzmq wheel (they bundle it) or set security.curve=off")


def secure_client(sock: zmq.Socket, keys: CurveKeys) -> None:
    """Make `sock`, not yet connected, a CURVE client holding the trial's client keypair."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.client_public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.client_secret)


def secure_server(sock: zmq.Socket, keys: CurveKeys, counters: StreamCounters) -> None:
    """Make `sock`, not yet bound, a CURVE server that lets in only the trial's clients; its refusals go to
    `counters`. Works for any number of sockets in one context."""
    guard_of(sock.context).protect(sock, keys.server_secret, z85.decode(keys.client_public), counters.refused)
