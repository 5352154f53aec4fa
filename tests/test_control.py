"""The worker control channel over real loopback ZeroMQ sockets: addressing, timeouts, bad input."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest
import zmq

from zrl import wire
from zrl.streams.control import PROTOCOL_VERSION, ControlClient, ControlServer, ErrorInfo
from zrl.streams.control_auth import ControlKey

KEY = ControlKey(b"k" * 32)


class EchoingServer:
    """A ControlServer in a thread that answers every request with its command and payload."""

    def __init__(self, trial: str, worker_id: str, delay: float = 0.0):
        self.server = ControlServer(trial, worker_id, key=KEY)
        self.delay = delay
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            request = self.server.recv(0.05)
            if request is None:
                continue
            time.sleep(self.delay)
            if request.payload.get("fail"):
                try:
                    raise ValueError("asked to fail")
                except ValueError as exc:
                    self.server.reply(request, error=ErrorInfo.from_exception(exc))
                continue
            self.server.reply(request, {"worker": self.server.sender, "command": request.command,
                                        "payload": request.payload, "sender": request.sender})

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.server.close()


@pytest.fixture
def servers():
    started = [EchoingServer("t1", "producer/0"), EchoingServer("t1", "producer/1"), EchoingServer("t1", "consumer/0")]
    yield started
    for server in started:
        server.close()


@pytest.fixture
def client(servers):
    client = ControlClient("t1", key=KEY)
    for server in servers:
        client.connect(server.server.sender, server.server.address)
    yield client
    client.close()


def test_one_group_and_all(client):
    one = client.request("producer/1", "status", {"x": 1}, timeout=5)
    assert list(one) == ["producer/1"]
    assert one["producer/1"].ok and one["producer/1"].result["payload"] == {"x": 1}
    assert one["producer/1"].result["sender"] == "controller"
    group = client.request("producer", "pause", timeout=5)
    assert sorted(group) == ["producer/0", "producer/1"]
    assert all(r.ok and r.result["command"] == "pause" and r.result["worker"] == w for w, r in group.items())
    everyone = client.request(None, "resume", timeout=5)
    assert sorted(everyone) == ["consumer/0", "producer/0", "producer/1"]


def test_unknown_target_and_command_are_errors(client):
    with pytest.raises(KeyError, match="trainer"):
        client.select("trainer")
    with pytest.raises(ValueError, match="allowed: configure"):
        client.request(None, "reboot")


def test_error_travels_as_type_message_traceback(client):
    reply = client.request("consumer/0", "configure", {"fail": True}, timeout=5)["consumer/0"]
    assert not reply.ok and reply.error.type == "ValueError" and reply.error.message == "asked to fail"
    assert "_serve" in reply.error.traceback


def test_timeout_names_the_silent_worker_and_late_replies_are_discarded():
    slow = EchoingServer("t1", "slow/0", delay=0.6)
    client = ControlClient("t1", key=KEY)
    try:
        client.connect("slow/0", slow.server.address)
        started = time.monotonic()
        reply = client.request("slow/0", "status", {"n": 1}, timeout=0.2)["slow/0"]
        assert reply.timed_out and not reply.ok and "slow/0" in reply.error.message
        assert time.monotonic() - started < 0.5
        # The late answer to n=1 arrives during this request and must not be taken for the answer to n=2.
        reply = client.request("slow/0", "status", {"n": 2}, timeout=5)["slow/0"]
        assert reply.ok and reply.result["payload"] == {"n": 2}
    finally:
        client.close()
        slow.close()


def _raw_request(address: str, frames: list[bytes], timeout_ms: int = 2000) -> list[bytes] | None:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        sock.send_multipart(frames)
        if sock.poll(timeout_ms):
            return sock.recv_multipart()
        return None
    finally:
        sock.close()


def _signed(*frames: bytes) -> list[bytes]:
    """[delimiter, signature, *frames]: frames that are authentic, whatever they hold."""
    return [b"", KEY.sign(frames), *frames]


def _header(**fields) -> bytes:
    full = {"v": PROTOCOL_VERSION, "trial": "t1", "sender": "x", "recipient": "producer/0", "id": "m1",
            "time": time.time(), "nonce": uuid.uuid4().hex, "command": "status", **fields}
    return wire.encode(full)[0]


def test_malformed_messages_are_dropped_and_the_server_keeps_serving(servers, client):
    target = servers[0]
    assert _raw_request(target.server.address, _signed(b"\xc1garbage", b"x"), timeout_ms=300) is None
    assert _raw_request(target.server.address, [b"only-one-frame"], timeout_ms=300) is None
    assert target.server.dropped == 2
    assert client.request("producer/0", "status", timeout=5)["producer/0"].ok


def test_wrong_trial_and_version_get_an_error_reply(servers):
    address = servers[0].server.address
    for header, expected in ((dict(trial="other"), "serves trial 't1'"), (dict(v=99), "version 99")):
        frames = _raw_request(address, _signed(_header(**header), wire.encode({})[0]))
        assert frames is not None
        reply_header = wire.decode([frames[2]])
        body = wire.decode(frames[3:])
        assert reply_header["ok"] is False and reply_header["reply_to"] == "m1"
        assert expected in body["message"]


def test_malformed_requests_are_counted_and_logged_once_per_kind(servers, caplog):
    target = servers[0].server
    malformed = {"framing": lambda: [b"only-one-frame"], "header": lambda: _signed(b"\xc1garbage", b"x"),
                 "body": lambda: _signed(_header(), b"\xc1")}
    with caplog.at_level(logging.WARNING, logger="zrl.streams"):
        for make_frames in [*malformed.values(), *malformed.values()]:
            assert _raw_request(target.address, make_frames(), timeout_ms=300) is None
    counts = target.counters.as_dict()
    assert {kind: counts[f"garbage.{kind}"] for kind in malformed} == dict.fromkeys(malformed, 2)
    assert counts["garbage"] == target.dropped == 6
    warnings = [record.getMessage() for record in caplog.records if "malformed" in record.getMessage()]
    assert len(warnings) == 3, warnings
