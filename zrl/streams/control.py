"""Worker control channel: the controller (DEALER per worker) sends commands, the worker (ROUTER) replies.

Commands: `configure`, `start`, `pause`, `resume`, `exit`, `status` (see `COMMANDS`).

Frames of a request, as the client sends them (the ROUTER prepends the client's identity frame)::

    frame 0   b""            delimiter
    frame 1   signature      HMAC-SHA256 over frames 2.. with the trial's `ControlKey` (see `zrl.streams.control_auth`)
    frame 2   header         zrl.wire frame: {"v": PROTOCOL_VERSION, "trial": str, "sender": str, "recipient": str,
                             "id": str (unique per message), "time": float (sender's Unix time), "nonce": str,
                             "command": str}
    frame 3.. body           zrl.wire frames of the command's payload (a dict, may be empty)

A reply has the same frames; its header is {"v", "trial", "sender", "recipient": the request's sender, "id", "time",
"nonce", "reply_to": request id, "ok": bool}, and its body is the command's result (a dict) when ok, else an error
{"type", "message", "traceback"}: a worker's exception travels as text, never as a pickled object.

The worker refuses, without a reply, every request that is not authentic: unsigned, with a wrong signature
(forged), addressed to another worker (misdirected), sent more than `MAX_MESSAGE_AGE_S` away from its clock
(stale), or carrying a nonce it has seen (replayed). These are counted by kind (`ControlServer.counters`:
`rejected.unsigned`, `rejected.forged`, ...) and the first of each kind is logged. A request whose frames do not
decode is dropped and counted the same way (`garbage.framing`, `garbage.header`, `garbage.body`). An authentic
request with the wrong protocol version, the wrong trial or an unknown command gets an error reply saying so. The
worker's socket is bound like every stream's (`zrl.streams.sockets.bind_socket`), with `CONTROL_SOCKETS` as its
options. The client checks the signature and recipient of every reply, matches replies to requests by id, and
discards late replies to a request that already timed out; refused and malformed ones are counted in
`ControlClient.counters`.

With `curve` on both ends (`security.curve=on`, `zrl.streams.curve`), a peer without the trial's CURVE keys gets no
connection at all, and the server counts it as `refused.<kind>`; the signature stays, against replays and for runs
with CURVE off.
"""

from __future__ import annotations

import logging
import time
import traceback as traceback_module
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import zmq

from zrl import wire
from zrl.streams.control_auth import MAX_MESSAGE_AGE_S, ControlKey, ReplayGuard, new_nonce
from zrl.streams.curve import CurveKeys
from zrl.streams.sockets import (
    BoundEndpoint,
    SocketConfig,
    StreamCounters,
    bind_socket,
    connect_socket,
    oversized,
)

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 2
COMMANDS = ("configure", "start", "pause", "resume", "exit", "status")
CONTROL_SOCKETS = SocketConfig(max_message_bytes=4 * 1024 * 1024, linger_ms=0)
"""Socket options of both ends of the control channel (the worker's bind host is set per worker); a command
and its reply carry a config or counters, never bulk data."""


@dataclass(frozen=True)
class ErrorInfo:
    """An exception as it crosses the wire: its type name, message and formatted traceback."""

    type: str
    message: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        return cls(type(exc).__name__, str(exc),
                   "".join(traceback_module.format_exception(type(exc), exc, exc.__traceback__)))

    def to_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}

    @classmethod
    def from_dict(cls, data: Any) -> ErrorInfo:
        if not isinstance(data, dict):
            return cls("ProtocolError", f"error reply body is not a mapping: {data!r}")
        return cls(str(data.get("type", "Error")), str(data.get("message", "")), str(data.get("traceback", "")))

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


@dataclass(frozen=True)
class ControlRequest:
    """A decoded request as the worker sees it."""

    identity: bytes
    id: str
    sender: str
    command: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class ControlReply:
    """A worker's answer to one request; `timed_out` means no answer came within the timeout."""

    worker_id: str
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error: ErrorInfo | None = None
    timed_out: bool = False


def _header_frame(header: dict[str, Any]) -> bytes:
    frames = wire.encode(header)
    if len(frames) != 1:
        raise wire.WireError("a control header must encode to a single frame (no arrays)")
    return bytes(frames[0])


def _signed_frames(key: ControlKey, header: dict[str, Any], body_frames: list[Any]) -> list[Any]:
    """[delimiter, signature, header, *body] of a message, with a fresh time and nonce in its header."""
    header = {**header, "time": time.time(), "nonce": new_nonce()}
    signed = [_header_frame(header), *body_frames]
    return [b"", key.sign(signed), *signed]


class MalformedMessage(wire.WireError):
    """A control message that cannot be read; `kind` names what was wrong with it, for counting."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class RejectedMessage(Exception):
    """A control message that is not authentic; `kind` names why (unsigned, forged, misdirected, ...), for counting."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


_HEADER_STRINGS = ("trial", "sender", "recipient", "id", "nonce")


def _open(frames: list[bytes], key: ControlKey, recipient: str) -> tuple[dict[str, Any], Any]:
    """Check and decode [delimiter, signature, header, *body] into (header, body).

    Raises MalformedMessage when it does not decode, RejectedMessage when it is not signed with `key` or not
    addressed to `recipient`.
    """
    if len(frames) < 4 or frames[0] != b"":
        raise MalformedMessage("framing", f"a control message needs delimiter, signature, header and body frames, "
                                          f"got {len(frames)} frames")
    signature, signed = frames[1], frames[2:]
    if not signature:
        raise RejectedMessage("unsigned", "a control message without a signature")
    if not key.verify(signature, signed):
        raise RejectedMessage("forged", "a control message whose signature does not match the trial's key")
    try:
        header = wire.decode([signed[0]])
    except wire.WireError as exc:
        raise MalformedMessage("header", f"control header: {exc}") from None
    if (not isinstance(header, dict) or not all(isinstance(header.get(k), str) for k in _HEADER_STRINGS)
            or not isinstance(header.get("time"), (int, float))):
        raise MalformedMessage("header", f"control header must be a mapping with str {', '.join(_HEADER_STRINGS)} "
                                         f"and a numeric time, got {header!r}")
    if header["recipient"] != recipient:
        raise RejectedMessage("misdirected", f"a control message for {header['recipient']!r} reached {recipient!r}")
    try:
        return header, wire.decode(signed[1:])
    except wire.WireError as exc:
        raise MalformedMessage("body", f"control body: {exc}") from None


class ControlServer(BoundEndpoint):
    """The worker's end: a ROUTER bound to `host` on a free port; `recv` yields authentic requests signed with `key`,
    `reply` answers them. With `curve`, only clients holding the trial's CURVE keys connect at all.

    Not thread-safe: use it from one thread (the worker's control thread).
    """

    def __init__(self, trial: str, sender: str, host: str = "127.0.0.1", context: zmq.Context | None = None, *,
                 key: ControlKey, max_age_s: float = MAX_MESSAGE_AGE_S, curve: CurveKeys | None = None):
        self.trial = trial
        self.sender = sender
        self._key = key
        self._guard = ReplayGuard(max_age_s)
        self.counters = StreamCounters("control", logger)
        self._socket, self.address = bind_socket(context or zmq.Context.instance(), zmq.ROUTER,
                                                 replace(CONTROL_SOCKETS, bind_host=host), counters=self.counters,
                                                 curve=curve)
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)

    @property
    def dropped(self) -> int:
        """How many malformed requests were dropped."""
        return self.counters["garbage"]

    def recv(self, timeout_s: float) -> ControlRequest | None:
        """The next valid request, or None after `timeout_s`. Invalid requests are answered or dropped here."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if not self._poller.poll(remaining_ms):
                return None
            frames = self._socket.recv_multipart()
            request = self._check(frames)
            if request is not None:
                return request
            if time.monotonic() >= deadline:
                return None

    def _check(self, frames: list[bytes]) -> ControlRequest | None:
        if oversized(frames, CONTROL_SOCKETS, self.counters):
            return None
        identity, rest = frames[0], frames[1:]
        try:
            header, body = _open(rest, self._key, self.sender)
        except MalformedMessage as exc:
            self.counters.garbage(exc.kind, exc)
            return None
        except RejectedMessage as exc:
            self.counters.rejected(exc.kind, str(exc))
            return None
        refusal = self._guard.check(header["time"], header["nonce"])
        if refusal is not None:
            self.counters.rejected(*refusal)
            return None
        request = ControlRequest(identity, header["id"], header["sender"], str(header.get("command")),
                                 body if isinstance(body, dict) else {})
        problem = None
        if header.get("v") != PROTOCOL_VERSION:
            problem = f"control protocol version {header.get('v')!r} is not supported (this worker speaks {PROTOCOL_VERSION})"
        elif header["trial"] != self.trial:
            problem = f"message for trial {header['trial']!r}; this worker serves trial {self.trial!r}"
        elif request.command not in COMMANDS:
            problem = f"unknown command {request.command!r}; allowed: {', '.join(COMMANDS)}"
        elif not isinstance(body, dict):
            problem = f"the body of command {request.command!r} must be a mapping, got {type(body).__name__}"
        if problem is None:
            return request
        self.reply(request, error=ErrorInfo("ProtocolError", problem))
        return None

    def reply(self, request: ControlRequest, result: dict[str, Any] | None = None,
              error: ErrorInfo | None = None) -> None:
        header = {"v": PROTOCOL_VERSION, "trial": self.trial, "sender": self.sender, "recipient": request.sender,
                  "id": uuid.uuid4().hex, "reply_to": request.id, "ok": error is None}
        body = error.to_dict() if error is not None else (result or {})
        try:
            body_frames = wire.encode(body)
        except wire.WireError as exc:
            body_frames = wire.encode(ErrorInfo.from_exception(exc).to_dict())
            header["ok"] = False
        self._socket.send_multipart([request.identity, *_signed_frames(self._key, header, body_frames)], copy=False)


class ControlClient:
    """The controller's end: one DEALER per worker; `request` addresses one worker, a group, or all of them, with
    requests signed by `key`, and takes only replies signed by it. With `curve`, it connects as a CURVE client.

    Not thread-safe: use it from one thread.
    """

    def __init__(self, trial: str, sender: str = "controller", context: zmq.Context | None = None, *,
                 key: ControlKey, curve: CurveKeys | None = None):
        self.trial = trial
        self.sender = sender
        self._key = key
        self._curve = curve
        self._context = context or zmq.Context.instance()
        self.counters = StreamCounters("control", logger)
        self._sockets: dict[str, zmq.Socket] = {}
        self._addresses: dict[str, str] = {}

    @property
    def workers(self) -> list[str]:
        return sorted(self._sockets)

    def address(self, worker_id: str) -> str:
        return self._addresses[worker_id]

    def connect(self, worker_id: str, address: str) -> None:
        """Talk to `worker_id` at `address` from now on (a new socket, so replies to an older incarnation are lost)."""
        self.disconnect(worker_id)
        self._sockets[worker_id] = connect_socket(self._context, zmq.DEALER, CONTROL_SOCKETS, address, curve=self._curve)
        self._addresses[worker_id] = address

    def disconnect(self, worker_id: str) -> None:
        sock = self._sockets.pop(worker_id, None)
        self._addresses.pop(worker_id, None)
        if sock is not None:
            sock.close(linger=0)

    def select(self, target: str | list[str] | None) -> list[str]:
        """Worker ids named by `target`: None (all), a group name, a worker id 'group/index', or a list of ids."""
        if target is None:
            return self.workers
        if isinstance(target, list):
            unknown = [t for t in target if t not in self._sockets]
            if unknown:
                raise KeyError(f"not connected to workers {unknown}; connected: {', '.join(self.workers)}")
            return list(target)
        if target in self._sockets:
            return [target]
        members = [w for w in self.workers if w.rsplit("/", 1)[0] == target]
        if not members:
            raise KeyError(f"no connected worker or group named {target!r}; connected: {', '.join(self.workers)}")
        return members

    def request(self, target: str | list[str] | None, command: str, payload: dict[str, Any] | None = None,
                timeout: float = 10.0) -> dict[str, ControlReply]:
        """Send `command` to every selected worker at once and collect replies for up to `timeout` seconds."""
        if command not in COMMANDS:
            raise ValueError(f"unknown control command {command!r}; allowed: {', '.join(COMMANDS)}")
        body_frames = wire.encode(payload or {})
        pending: dict[str, str] = {}
        replies: dict[str, ControlReply] = {}
        for worker_id in self.select(target):
            message_id = uuid.uuid4().hex
            header = {"v": PROTOCOL_VERSION, "trial": self.trial, "sender": self.sender, "recipient": worker_id,
                      "id": message_id, "command": command}
            try:
                # Never block: a DEALER whose only connection failed its handshake (or is full) has nowhere to
                # queue, and a blocking send would wait for good.
                self._sockets[worker_id].send_multipart(_signed_frames(self._key, header, body_frames), copy=False,
                                                        flags=zmq.NOBLOCK)
            except zmq.Again:
                replies[worker_id] = ControlReply(worker_id, ok=False, timed_out=True, error=ErrorInfo(
                    "ConnectionError", f"no connection to worker {worker_id} at {self._addresses[worker_id]} to "
                    f"send {command!r} on (refused, not yet up, or full)"))
                continue
            pending[worker_id] = message_id
        poller = zmq.Poller()
        by_socket = {self._sockets[w]: w for w in pending}
        for sock in by_socket:
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while pending:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            for sock, _ in poller.poll(remaining_ms):
                worker_id = by_socket[sock]
                reply = self._read(sock, worker_id, pending.get(worker_id))
                if reply is not None:
                    replies[worker_id] = reply
                    pending.pop(worker_id, None)
        for worker_id in pending:
            replies[worker_id] = ControlReply(worker_id, ok=False, timed_out=True, error=ErrorInfo(
                "TimeoutError", f"worker {worker_id} did not answer {command!r} within {timeout:g} s"))
        return replies

    def _read(self, sock: zmq.Socket, worker_id: str, expected_id: str | None) -> ControlReply | None:
        frames = sock.recv_multipart()
        if oversized(frames, CONTROL_SOCKETS, self.counters):
            return None
        try:
            header, body = _open(frames, self._key, self.sender)
        except MalformedMessage as exc:
            self.counters.garbage(exc.kind, f"reply from {worker_id}: {exc}")
            return None
        except RejectedMessage as exc:
            self.counters.rejected(exc.kind, f"reply from {worker_id}: {exc}")
            return None
        if expected_id is None or header.get("reply_to") != expected_id:
            return None
        if header.get("ok") is True:
            return ControlReply(worker_id, ok=True, result=body if isinstance(body, dict) else {"value": body})
        return ControlReply(worker_id, ok=False, error=ErrorInfo.from_dict(body))

    def close(self) -> None:
        for worker_id in list(self._sockets):
            self.disconnect(worker_id)
