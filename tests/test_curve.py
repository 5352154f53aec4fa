"""CURVE on real loopback sockets: the trial's keys, the ZAP guard, and what a peer without the keys gets (nothing)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import zmq
import zmq.auth.thread

from zrl import wire
from zrl.controller.overrides import ConfigError, apply_overrides
from zrl.controller.plan import RunPaths, worker_launch
from zrl.streams import (
    InferenceStreamConfig,
    IpInferenceClient,
    IpSampleConsumer,
    IpSampleProducer,
    SampleConsumer,
    SampleStreamConfig,
)
from zrl.streams.control import ControlClient, ControlServer
from zrl.streams.control_auth import ControlKey
from zrl.streams.curve import CurveKeys, secure_client
from zrl.streams.curve_guard import guard_of

KEY = ControlKey(b"c" * 32)
KEYS = CurveKeys.derive(KEY)
OTHER = CurveKeys.derive(ControlKey(b"o" * 32))
SAMPLE = wire.encode(["sample", [{"injected": True}]])
"""A well-formed sample batch: what an intruder would push if it could get through."""


def plain(sock: zmq.Socket) -> None:
    """No CURVE at all."""


def other_trial(sock: zmq.Socket) -> None:
    """CURVE with another trial's keys: the server key is not this trial's."""
    secure_client(sock, OTHER)


def known_server_key(sock: zmq.Socket) -> None:
    """CURVE with this trial's server public key (public keys may leak) and a client keypair of its own."""
    public, secret = zmq.curve_keypair()
    sock.setsockopt(zmq.CURVE_SERVERKEY, KEYS.server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)


INTRUDERS: dict[str, Callable[[zmq.Socket], None]] = {
    "not_curve": plain, "server_key": other_trial, "client_key": known_server_key}
"""How a peer without the trial's keys may connect, by the kind of refusal it meets."""


def refused_each_intruder(counts: dict[str, int]) -> bool:
    """Whether `counts` hold a refusal of every intruder. A plain client that sees the mismatch of mechanisms first
    hangs up before the server has read its greeting: that refusal shows as a broken-off handshake."""
    return (counts.get("refused.server_key", 0) >= 1 and counts.get("refused.client_key", 0) >= 1
            and counts.get("refused.not_curve", 0) + counts.get("refused.handshake", 0) >= 1)


@pytest.fixture
def intruders() -> Iterator[Callable[[int, str], zmq.Socket]]:
    """Makes sockets of a context of their own, as another process would have; closed at the end."""
    context = zmq.Context()
    made: list[zmq.Socket] = []

    def connect(socket_type: int, address: str, how: Callable[[zmq.Socket], None]) -> zmq.Socket:
        sock = context.socket(socket_type)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 1000)
        how(sock)
        sock.connect(address)
        made.append(sock)
        return sock

    yield connect
    for sock in made:
        sock.close(0)
    context.term()


def try_send(sock: zmq.Socket, frames: list[bytes]) -> None:
    """Sends as an intruder would. Once the server has refused its handshake, the socket may hold no pipe until it
    reconnects, and a send then waits: after a second the intruder gives up, which is all it could do."""
    try:
        sock.send_multipart(frames)
    except zmq.Again:
        pass


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_every_holder_of_the_control_key_derives_the_same_keys_and_no_repr_shows_a_secret():
    again = CurveKeys.derive(ControlKey(b"c" * 32))
    assert again == KEYS and OTHER.server_public != KEYS.server_public and KEYS.server_public != KEYS.client_public
    assert zmq.curve_public(KEYS.server_secret) == KEYS.server_public
    assert zmq.curve_public(KEYS.client_secret) == KEYS.client_public
    shown = repr(KEYS) + str(KEYS)
    assert KEYS.server_public.decode() in shown
    assert KEYS.server_secret.decode() not in shown and KEYS.client_secret.decode() not in shown
    assert KEY.hex() not in shown


def test_a_sample_stream_takes_only_producers_with_the_keys_and_counts_each_refusal_once_logged(intruders, caplog):
    with caplog.at_level(logging.WARNING, logger="zrl.streams"), IpSampleConsumer(curve=KEYS) as consumer:
        for how in INTRUDERS.values():
            try_send(intruders(zmq.PUSH, consumer.address, how), SAMPLE)
        with IpSampleProducer(consumer.address, SampleStreamConfig(batch_bytes=1), curve=KEYS) as producer:
            producer.post({"seq": 1}, flush=True)
            assert consumer.consume(10, timeout=5) == [{"seq": 1}]
        assert eventually(lambda: refused_each_intruder(consumer.as_dict()))
        assert consumer.consume(10, timeout=0.5) == []  # nothing an intruder sent got through
        counts = consumer.as_dict()
    assert counts["received"] == 1 and counts["garbage"] == 0
    kinds = [key.removeprefix("refused.") for key in counts if key.startswith("refused.")]
    assert counts["refused"] == sum(counts[f"refused.{kind}"] for kind in kinds)
    warnings = [r.getMessage() for r in caplog.records if "refused a connection" in r.getMessage()]
    assert sorted(warning.split("(")[1].split(")")[0] for warning in warnings) == sorted(kinds), warnings
    assert not any(KEYS.server_secret.decode() in r.getMessage() for r in caplog.records)


def test_an_inference_server_answers_only_clients_with_the_keys(intruders):
    from zrl.streams import InferenceServer

    with InferenceServer(curve=KEYS) as server:
        for how in INTRUDERS.values():
            try_send(intruders(zmq.DEALER, server.address, how), wire.encode(["request", [[1, "injected"]]]))
        stranger = IpInferenceClient(server.address, InferenceStreamConfig(connect_timeout_s=0.3))  # plain client
        stranger.post("from a client without keys")
        with IpInferenceClient(server.address, curve=KEYS) as client:
            request_id = client.post("hello")
            requests = server.poll_requests(10, timeout=5)
            assert [request.payload for request in requests] == ["hello"]
            server.respond_many([(request, "hi") for request in requests])
            assert client.wait([request_id], timeout=5) == {request_id: "hi"}
        assert eventually(lambda: refused_each_intruder(server.as_dict()))
        assert server.poll_requests(10, timeout=0.5) == []
        assert server.as_dict()["received"] == 1 and server.as_dict()["garbage"] == 0
        assert stranger.as_dict()["sent"] == 0  # its socket never connected, so nothing left it
        stranger.poll_responses(timeout=0.2)
        assert stranger.as_dict()["refused"] >= 1  # a client, too, counts the handshakes that failed
        stranger.close()


def test_the_control_channel_with_curve_answers_only_clients_with_the_keys():
    server = ControlServer("t1", "w/0", key=KEY, curve=KEYS)
    served = threading.Event()

    def serve() -> None:
        while not served.is_set():
            request = server.recv(0.05)
            if request is not None:
                server.reply(request, {"command": request.command})

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with_keys = ControlClient("t1", key=KEY, curve=KEYS)
    signing_key_only = ControlClient("t1", key=KEY)  # signs correctly, but holds no CURVE keys
    try:
        with_keys.connect("w/0", server.address)
        signing_key_only.connect("w/0", server.address)
        assert with_keys.request("w/0", "status", timeout=5)["w/0"].result == {"command": "status"}
        assert signing_key_only.request("w/0", "exit", timeout=1)["w/0"].timed_out
        assert eventually(lambda: server.as_dict().get("refused", 0) >= 1)
    finally:
        served.set()
        thread.join(5)
        server.close()
        with_keys.close()
        signing_key_only.close()


@pytest.mark.timeout(60)
def test_a_control_request_over_a_refused_connection_times_out_instead_of_blocking():
    # The client holds no CURVE keys, so every handshake with the server fails; once it has, the DEALER has no
    # connection to queue on, and a send that blocked would hang the controller for good.
    server = ControlServer("t1", "w/0", key=KEY, curve=KEYS)
    client = ControlClient("t1", key=KEY)
    try:
        client.connect("w/0", server.address)
        for _ in range(5):
            started = time.monotonic()
            reply = client.request("w/0", "status", timeout=0.5)["w/0"]
            assert reply.timed_out and not reply.ok, reply
            assert time.monotonic() - started < 5
            time.sleep(0.3)
            server.recv(0.01)
    finally:
        server.close()
        client.close()


def test_servers_of_two_trials_in_one_context_each_take_only_their_own_clients():
    context = zmq.Context()
    consumers = {keys.server_public: IpSampleConsumer(context=context, curve=keys) for keys in (KEYS, OTHER)}
    ours, theirs = consumers.values()
    try:
        for consumer, keys in ((ours, KEYS), (theirs, OTHER)):
            with IpSampleProducer(consumer.address, SampleStreamConfig(batch_bytes=1), context=context,
                                  curve=keys) as producer:
                producer.post({"for": keys.server_public.decode()}, flush=True)
            assert consumer.consume(10, timeout=5) == [{"for": keys.server_public.decode()}]
        # A producer of our trial cannot reach their consumer: it does not hold their keys.
        with IpSampleProducer(theirs.address, SampleStreamConfig(batch_bytes=1, full_policy="drop"), context=context,
                              curve=KEYS) as producer:
            producer.post({"misdelivered": True}, flush=True)
            assert eventually(lambda: theirs.as_dict().get("refused.server_key", 0) >= 1)
        assert theirs.consume(10, timeout=0.5) == []
        assert ours.as_dict().get("refused", 0) == 0
    finally:
        for consumer in consumers.values():
            consumer.close()
        context.term()  # ends the guard's thread; a hang here fails the test by its timeout


def test_garbage_and_broken_handshakes_do_not_stop_the_server_for_others(intruders):
    config = SampleStreamConfig(batch_bytes=1)
    with SampleConsumer(config, curve=KEYS) as consumer:
        host, port = consumer.address.removeprefix("tcp://").rsplit(":", 1)
        raw = []
        for payload in (b"GET / HTTP/1.0\r\n\r\n", b"\xff" + b"\x00" * 8 + b"\x7f\x03\x00CURVE" + b"\x00" * 40,
                        bytes(range(256)) * 64, b""):
            conn = socket.create_connection((host, int(port)))
            conn.sendall(payload)
            raw.append(conn)
        for how in INTRUDERS.values():
            for _ in range(20):
                try_send(intruders(zmq.PUSH, consumer.address, how), SAMPLE)
        with IpSampleProducer(consumer.address, config, curve=KEYS) as producer:
            for seq in range(100):
                producer.post({"seq": seq})
            producer.flush()
            got = []
            deadline = time.monotonic() + 10
            while len(got) < 100 and time.monotonic() < deadline:
                got += consumer.consume(100, timeout=0.2)
        assert [sample["seq"] for sample in got] == list(range(100))
        for conn in raw:
            conn.close()
        assert eventually(lambda: consumer.as_dict().get("refused", 0) >= 3 * 20)
        assert consumer.as_dict()["garbage"] == 0


def test_a_context_whose_zap_endpoint_is_taken_says_so():
    context = zmq.Context()
    authenticator = zmq.auth.thread.ThreadAuthenticator(context)
    authenticator.start()
    try:
        with pytest.raises(RuntimeError, match="another ZAP handler"):
            guard_of(context)
    finally:
        authenticator.stop()
        context.term()


def test_security_curve_is_a_validated_override_that_reaches_every_worker(tmp_path):
    from test_config import echo_config

    config = echo_config(run_root=str(tmp_path))
    assert config.security.curve == "on"
    off = apply_overrides(config, ["security.curve=off"])
    assert off.security.curve == "off"
    with pytest.raises(ConfigError, match="security.curve: 'maybe' is not allowed; allowed values: off, on"):
        apply_overrides(config, ["security.curve=maybe"])
    for chosen in (config, off):
        argv = worker_launch(chosen, RunPaths.for_config(chosen), "producer", 0).argv
        assert argv[argv.index("--curve") + 1] == chosen.security.curve
