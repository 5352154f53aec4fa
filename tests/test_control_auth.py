"""Signed control messages over real loopback sockets: what a worker and a controller refuse, and the key's file."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path

import pytest
import zmq
from test_control import KEY, EchoingServer

from zrl import wire
from zrl.streams.control import PROTOCOL_VERSION, ControlClient
from zrl.streams.control_auth import ControlKey, ReplayGuard
from zrl.streams.control_key_file import (
    CONTROL_KEY_ENV,
    CONTROL_KEY_FILE_ENV,
    ControlKeyError,
    load_control_key,
    read_control_key,
    write_control_key,
)

OTHER_KEY = ControlKey(b"o" * 32)


@pytest.fixture
def server():
    started = EchoingServer("t1", "w/0")
    yield started
    started.close()


def request_frames(key: ControlKey | None, recipient: str = "w/0", sent_at: float | None = None,
                   command: str = "exit") -> list[bytes]:
    header = wire.encode({"v": PROTOCOL_VERSION, "trial": "t1", "sender": "controller", "recipient": recipient,
                          "id": uuid.uuid4().hex, "time": time.time() if sent_at is None else sent_at,
                          "nonce": uuid.uuid4().hex, "command": command})[0]
    body = wire.encode({})[0]
    return [b"", key.sign([header, body]) if key is not None else b"", header, body]


def answers(address: str, messages: list[list[bytes]], wait_ms: int = 500) -> int:
    """How many replies `messages`, sent in order from one DEALER, got."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        for frames in messages:
            sock.send_multipart(frames)
        count = 0
        while sock.poll(wait_ms):
            sock.recv_multipart()
            count += 1
        return count
    finally:
        sock.close()


def test_requests_that_are_not_authentic_get_no_reply_and_are_counted_and_logged_once_per_kind(server, caplog):
    captured = request_frames(KEY, command="status")
    attempts = {
        "unsigned": lambda: request_frames(None),
        "forged": lambda: request_frames(OTHER_KEY),
        "misdirected": lambda: request_frames(KEY, recipient="w/1"),
        "stale": lambda: request_frames(KEY, sent_at=time.time() - 3600),
    }
    with caplog.at_level(logging.WARNING, logger="zrl.streams"):
        assert answers(server.server.address, [make() for make in attempts.values() for _ in range(2)]) == 0
        assert answers(server.server.address, [captured, captured, captured]) == 1
    counts = server.server.counters.as_dict()
    assert {kind: counts[f"rejected.{kind}"] for kind in [*attempts, "replayed"]} == dict.fromkeys([*attempts, "replayed"], 2)
    assert counts["rejected"] == 10
    warnings = [r.getMessage() for r in caplog.records if "rejected a message" in r.getMessage()]
    assert len(warnings) == 5, warnings
    assert server.thread.is_alive()
    assert server.server.dropped == 0  # refused, not malformed


class FakeWorker:
    """A ROUTER that answers each request with the frames `make_reply(header)` builds."""

    def __init__(self, make_reply):
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self.make_reply = make_reply
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        if self.sock.poll(5000):
            identity, *frames = self.sock.recv_multipart()
            self.sock.send_multipart([identity, *self.make_reply(wire.decode([frames[2]]))])

    def close(self) -> None:
        self.thread.join(timeout=5)
        self.sock.close()


def reply_frames(key: ControlKey | None, request: dict, recipient: str | None = None) -> list[bytes]:
    header = wire.encode({"v": PROTOCOL_VERSION, "trial": "t1", "sender": "w/0",
                          "recipient": recipient or request["sender"], "id": uuid.uuid4().hex, "time": time.time(),
                          "nonce": uuid.uuid4().hex, "reply_to": request["id"], "ok": True})[0]
    body = wire.encode({"status": "RUNNING"})[0]
    return [b"", key.sign([header, body]) if key is not None else b"", header, body]


@pytest.mark.parametrize("kind, make_reply", [
    ("unsigned", lambda request: reply_frames(None, request)),
    ("forged", lambda request: reply_frames(OTHER_KEY, request)),
    ("misdirected", lambda request: reply_frames(KEY, request, recipient="operator")),
])
def test_the_client_takes_only_signed_replies_addressed_to_it(kind, make_reply):
    fake = FakeWorker(make_reply)
    client = ControlClient("t1", key=KEY)
    try:
        client.connect("w/0", fake.address)
        reply = client.request("w/0", "status", timeout=0.5)["w/0"]
        assert reply.timed_out and not reply.ok
        assert client.counters[f"rejected.{kind}"] == 1
    finally:
        client.close()
        fake.close()


def test_a_signed_reply_is_taken(server):
    client = ControlClient("t1", key=KEY)
    try:
        client.connect("w/0", server.server.address)
        reply = client.request("w/0", "status", timeout=5)["w/0"]
        assert reply.ok and reply.result["command"] == "status"
        assert client.counters["rejected"] == 0
    finally:
        client.close()


def test_the_replay_guard_forgets_nonces_only_once_their_messages_are_stale():
    now = [1000.0]
    guard = ReplayGuard(max_age_s=10, clock=lambda: now[0])
    assert guard.check(1000.0, "a") is None
    assert guard.check(1000.0, "a")[0] == "replayed"
    assert guard.check(1011.0, "b")[0] == guard.check(989.0, "b")[0] == guard.check(float("nan"), "b")[0] == "stale"
    now[0] = 1009.0
    assert guard.check(1009.0, "c") is None
    assert guard.check(1000.0, "a")[0] == "replayed"  # still within its age: still remembered
    now[0] = 1030.0
    assert guard.check(1030.0, "d") is None
    assert guard.check(1000.0, "a")[0] == "stale"
    assert set(guard._seen) == {"d"}


def test_a_key_never_shows_in_its_repr_or_errors():
    key = ControlKey.generate()
    assert key.hex() not in repr(key) and key.hex() not in str(key)
    with pytest.raises(ValueError) as error:
        ControlKey.from_hex("zz" + key.hex())
    assert key.hex() not in str(error.value)


def test_the_key_file_is_private_and_a_shared_one_is_refused(tmp_path: Path):
    key = ControlKey.generate()
    path = tmp_path / "control.key"
    write_control_key(path, key)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_control_key(path).hex() == key.hex()
    os.chmod(path, 0o644)
    with pytest.raises(ControlKeyError, match="mode 0600") as error:
        read_control_key(path)
    assert key.hex() not in str(error.value)
    link = tmp_path / "link.key"
    os.chmod(path, 0o600)
    link.symlink_to(path)
    with pytest.raises(ControlKeyError, match="cannot read"):
        read_control_key(link)


def test_the_key_comes_from_the_file_named_in_the_environment_or_the_environment_itself(tmp_path: Path):
    in_file, in_env = ControlKey.generate(), ControlKey.generate()
    path = tmp_path / "control.key"
    write_control_key(path, in_file)
    assert load_control_key({CONTROL_KEY_FILE_ENV: str(path), CONTROL_KEY_ENV: in_env.hex()}).hex() == in_file.hex()
    assert load_control_key({CONTROL_KEY_ENV: in_env.hex()}).hex() == in_env.hex()
    with pytest.raises(ControlKeyError, match="no control key"):
        load_control_key({})
