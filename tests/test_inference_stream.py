"""Inference stream over real ZeroMQ sockets: round trips, batching, discovery, garbage, deadline failover."""

from __future__ import annotations

import logging
import socket
import time
import uuid

import msgpack
import numpy as np
import pytest
import zmq
from conftest import free_port

from zrl import wire
from zrl.nameresolve import make_name_resolver, names
from zrl.streams import (
    InferenceServer,
    InferenceStreamConfig,
    InlineInferenceClient,
    IpInferenceClient,
    NameResolvingInferenceClient,
    NameResolvingInferenceServer,
    SocketConfig,
)


def _serve(servers, until, handler=lambda payload: {"echo": payload}, timeout=5.0):
    """Answer requests on `servers` until `until()` is true."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "serving loop timed out"
        for server in servers:
            for request in server.poll_requests(64, timeout=0.01):
                server.respond(request, handler(request.payload))


def _wait_serving(client, servers, ids, timeout=5.0):
    got = {}
    deadline = time.monotonic() + timeout
    while len(got) < len(ids):
        assert time.monotonic() < deadline, f"only {len(got)} of {len(ids)} responses arrived"
        for server in servers:
            for request in server.poll_requests(64, timeout=0.005):
                server.respond(request, {"echo": request.payload, "server": server.address})
        got.update(dict(client.poll_responses(timeout=0.005)))
    return got


def test_ip_round_trip_with_generation_request():
    with InferenceServer() as server, IpInferenceClient(server.address) as client:
        payload = {"prefix": np.arange(300, dtype=np.int64), "max_new_tokens": 16,
                   "sampling": {"temperature": 1.0, "top_p": 0.9}}
        request_id = client.post(payload)
        [request] = server.poll_requests(8, timeout=2.0)
        assert request.id == request_id and request.payload["max_new_tokens"] == 16
        np.testing.assert_array_equal(request.payload["prefix"], payload["prefix"])
        assert server.respond(request, {"tokens": np.arange(16), "version": 3})
        response = client.wait([request_id], timeout=2.0)[request_id]
        assert response["version"] == 3 and list(response["tokens"]) == list(range(16))
        assert client.as_dict()["sent"] == 1 and client.as_dict()["received"] == 1
        assert server.as_dict()["received"] == 1 and server.as_dict()["sent"] == 1


def test_client_batches_posts_into_one_message_and_server_polls_a_batch():
    with InferenceServer() as server, IpInferenceClient(server.address) as client:
        ids = [client.post(i, flush=False) for i in range(10)]
        assert server.poll_requests(64, timeout=0.2) == []
        client.flush()
        batch = server.poll_requests(64, timeout=2.0)
        assert [request.id for request in batch] == ids and [request.payload for request in batch] == list(range(10))
        assert server.respond_many([(request, request.payload * 2) for request in batch]) == 10
        assert client.wait(ids, timeout=2.0) == {request_id: 2 * i for i, request_id in enumerate(ids)}


def test_poll_requests_respects_max_batch():
    with InferenceServer() as server, IpInferenceClient(server.address) as client:
        ids = client.post_many(range(5))
        first = server.poll_requests(3, timeout=2.0)
        rest = server.poll_requests(3, timeout=2.0)
        assert len(first) == 3 and [r.id for r in first + rest] == ids


def test_call_and_wait_time_out_naming_the_missing_ids():
    with InferenceServer() as server, IpInferenceClient(server.address) as client:
        with pytest.raises(TimeoutError, match=r"ids \[1\]"):
            client.call("never answered", timeout=0.2)
        assert len(server.poll_requests(8, timeout=1.0)) == 1


def test_inline_client_calls_the_handler_once_per_flushed_batch():
    batches = []

    def handler(payloads):
        batches.append(list(payloads))
        return [payload + 1 for payload in payloads]

    client = InlineInferenceClient(handler)
    ids = client.post_many([1, 2, 3])
    assert client.wait(ids, timeout=1.0) == dict(zip(ids, [2, 3, 4], strict=True))
    assert client.call(10, timeout=1.0) == 11
    assert batches == [[1, 2, 3], [10]]
    with pytest.raises(ValueError, match="2 responses for 1 requests"):
        InlineInferenceClient(lambda payloads: [1, 2]).call(0, timeout=1.0)


@pytest.mark.parametrize("backend", ["memory", "file"])
def test_name_resolving_client_discovers_all_servers_and_spreads_load(backend, tmp_path):
    url = f"memory://{uuid.uuid4().hex}" if backend == "memory" else f"file://{tmp_path}/names"
    resolver = make_name_resolver(url)
    root = names.inference_stream("exp", "trial", "policy")
    config = InferenceStreamConfig(resolve_interval_s=0.1, keepalive_ttl_s=2.0)
    servers = [NameResolvingInferenceServer(resolver, root, config) for _ in range(3)]
    client = NameResolvingInferenceClient(resolver, root, config)
    try:
        assert sorted(client.addresses) == sorted(server.address for server in servers)
        ids = client.post_many(range(30))
        got = _wait_serving(client, servers, ids)
        assert sorted(got) == ids and all(got[i]["echo"] == n for n, i in enumerate(ids))
        per_server = {server.address: server.as_dict()["received"] for server in servers}
        assert all(count == 10 for count in per_server.values()), per_server
        servers[0].close()
        time.sleep(0.15)
        client.poll_responses(timeout=0.01)
        assert sorted(client.addresses) == sorted(server.address for server in servers[1:])
    finally:
        client.close()
        for server in servers:
            server.close()
        resolver.close()


def test_garbage_is_dropped_and_counted_and_server_keeps_serving(caplog):
    with InferenceServer() as server, IpInferenceClient(server.address) as client:
        attacker = zmq.Context.instance().socket(zmq.DEALER)
        attacker.setsockopt(zmq.LINGER, 0)
        attacker.connect(server.address)
        garbage = [[b"\xc1"], [b"hello"], [msgpack.packb([1, ["request", [["id-not-int", 1]]]])],
                   [msgpack.packb([1, ["response", []]])], wire.encode(np.arange(1000))[:1],
                   [msgpack.packb([1, ["request", "x"]]), b"extra"]]
        try:
            with caplog.at_level(logging.WARNING, logger="zrl.streams"):
                for frames in garbage:
                    attacker.send_multipart(frames)
                ids = client.post_many(["a", "b"])
                got = _wait_serving(client, [server], ids)
        finally:
            attacker.close()
        assert [got[i]["echo"] for i in ids] == ["a", "b"]
        deadline = time.monotonic() + 2
        while server.as_dict()["garbage"] < len(garbage) and time.monotonic() < deadline:
            server.poll_requests(8, timeout=0.05)
        counts = server.as_dict()
        assert counts["garbage"] == len(garbage) and counts["received"] == 2
        assert counts["garbage.undecodable"] == 4 and counts["garbage.not_a_request_batch"] == 2
        assert len([r for r in caplog.records if "malformed" in r.getMessage()]) == 2


def test_client_drops_garbage_and_unknown_ids_from_a_server():
    with InferenceServer() as server, IpInferenceClient(server.address) as client:
        request_id = client.post("x")
        [request] = server.poll_requests(1, timeout=2.0)
        raw = server._socket  # a misbehaving server: send garbage on the real route
        raw.send_multipart([request.client, b"\xc1"])
        raw.send_multipart([request.client, *wire.encode(["response", [[999, "forged"]]])])
        server.respond(request, "real")
        assert client.wait([request_id], timeout=2.0) == {request_id: "real"}
        deadline = time.monotonic() + 2
        while client.as_dict()["garbage"] < 2 and time.monotonic() < deadline:
            client.poll_responses(timeout=0.05)
        assert client.as_dict()["garbage.undecodable"] == 1 and client.as_dict()["garbage.unknown_request_id"] == 1


def test_missed_deadline_resends_with_same_ids_and_drops_late_duplicates():
    config = InferenceStreamConfig(request_timeout_s=0.4, quarantine_s=30.0)
    with InferenceServer(config) as slow, InferenceServer(config) as fast, \
            IpInferenceClient([slow.address, fast.address], config) as client:
        ids = client.post_many(range(6))
        held = slow.poll_requests(64, timeout=2.0)
        assert len(held) == 3, "the fewest-outstanding rule gives each server half"
        got = _wait_serving(client, [fast], ids, timeout=5.0)
        assert sorted(got) == ids and all(response["server"] == fast.address for response in got.values())
        assert client.as_dict()["resent"] == 3
        slow.respond_many([(request, {"late": True}) for request in held])
        deadline = time.monotonic() + 2
        while client.as_dict().get("dropped.duplicate", 0) < 3 and time.monotonic() < deadline:
            assert client.poll_responses(timeout=0.05) == [], "late duplicates must not surface"
        assert client.as_dict()["dropped.duplicate"] == 3 and client.as_dict()["received"] == 6
        assert client.outstanding() == 0


def test_unencodable_payload_is_refused_alone_and_does_not_poison_the_client():
    with InferenceServer() as server, IpInferenceClient(server.address) as client:
        good = [client.post(n, flush=False) for n in range(2)]
        client.post(object(), flush=False)
        good.append(client.post(2, flush=False))
        with pytest.raises(wire.WireError, match="request 3"):
            client.flush()
        assert sorted(_wait_serving(client, [server], good)) == good
        assert client.poll_responses(timeout=0.1) == []
        assert client.outstanding() == 0


def test_respond_many_counts_what_it_sent_before_an_unencodable_response():
    with InferenceServer() as server, IpInferenceClient(server.address) as first, \
            IpInferenceClient(server.address) as second:
        ids = [first.post("a"), second.post("b")]
        requests = []
        deadline = time.monotonic() + 5
        while len(requests) < 2 and time.monotonic() < deadline:
            requests += server.poll_requests(8, timeout=0.1)
        by_payload = {request.payload: request for request in requests}
        with pytest.raises(wire.WireError, match=f"request {ids[1]}"):
            server.respond_many([(by_payload["a"], "fine"), (by_payload["b"], object())])
        assert first.wait([ids[0]], timeout=2.0) == {ids[0]: "fine"}
        counts = server.as_dict()
        assert counts["sent"] == 1 and counts["dropped.unencodable"] == 1


def test_missed_deadline_moves_only_late_requests_and_a_late_answer_keeps_the_quarantine():
    config = InferenceStreamConfig(request_timeout_s=3.0, quarantine_s=60.0)
    with InferenceServer(config) as slow, InferenceServer(config) as fast, \
            IpInferenceClient([slow.address, fast.address], config) as client:

        def serve_fast_until(done, timeout=10.0):
            deadline = time.monotonic() + timeout
            while not done():
                assert time.monotonic() < deadline, "timed out serving the fast server"
                fast.respond_many([(request, "fast") for request in fast.poll_requests(64, timeout=0.01)])
                client.poll_responses(timeout=0.01)

        old, _ = client.post_many(["old", "a"])
        assert client.server_of(old) == slow.address
        started = time.monotonic()
        serve_fast_until(lambda: time.monotonic() - started > 1.5)
        _, recent = client.post_many(["b", "recent"])
        assert client.server_of(recent) == slow.address
        serve_fast_until(lambda: client.as_dict().get("resent", 0) > 0)
        assert client.as_dict()["resent"] == 1, "only the request past its own deadline moves"
        assert client.server_of(recent) == slow.address
        held = {request.payload: request for request in slow.poll_requests(8, timeout=1.0)}
        assert slow.respond(held["old"], "late")
        serve_fast_until(lambda: client.server_of(old) is None and client.as_dict()["received"] >= 3)
        more = client.post_many(range(4))
        assert {client.server_of(request_id) for request_id in more} == {fast.address}, \
            "a late answer does not lift the quarantine"


def test_request_that_meets_a_full_queue_goes_to_another_server_at_once():
    # A server that is not listening takes exactly send_hwm messages into its queue, with no kernel buffers
    # behind it, so the point where its queue is full is exact.
    config = InferenceStreamConfig(sockets=SocketConfig(send_hwm=1))
    full_address = f"tcp://127.0.0.1:{free_port()}"
    with InferenceServer(config) as idle, IpInferenceClient([full_address, idle.address], config) as client:
        time.sleep(0.2)
        ids = [client.post(n) for n in range(40)]
        waiting = sum(1 for request_id in ids if client.server_of(request_id) == full_address)
        assert waiting <= 1, f"{waiting} of 40 requests wait on a server whose queue is full"
        answered: dict[int, object] = {}
        deadline = time.monotonic() + 10
        while len(answered) < 40 - waiting and time.monotonic() < deadline:
            idle.respond_many([(request, "ok") for request in idle.poll_requests(64, timeout=0.01)])
            answered.update(client.poll_responses(timeout=0.01))
        assert len(answered) == 40 - waiting
        counts = client.as_dict()
        assert counts["queue_full"] > 0 and counts["dropped"] == 0 and counts.get("resent", 0) == 0


def test_server_that_accepts_tcp_but_never_completes_the_handshake_gets_no_requests():
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel accepts connections; nothing ever answers ZeroMQ's greeting
    silent_address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
    config = InferenceStreamConfig(connect_timeout_s=0.5)
    try:
        with InferenceServer(config) as live, IpInferenceClient([silent_address, live.address], config) as client:
            ids = client.post_many(range(20))
            assert client.outstanding_by_server() == {silent_address: 0, live.address: 20}
            got = _wait_serving(client, [live], ids)
            assert sorted(got) == ids
    finally:
        silent.close()


def test_cancelled_request_is_not_resent_and_its_late_response_is_dropped():
    config = InferenceStreamConfig(request_timeout_s=0.5, quarantine_s=0.1)
    with InferenceServer(config) as server, IpInferenceClient(server.address, config) as client:
        request_id = client.post("slow")
        with pytest.raises(TimeoutError):
            client.wait([request_id], timeout=0.2)
        assert client.cancel([request_id]) == 1 and client.outstanding() == 0
        assert client.poll_responses(timeout=1.5) == []
        [request] = server.poll_requests(8, timeout=1.0)
        assert server.poll_requests(8, timeout=0.1) == [], "a cancelled request is not sent again"
        server.respond(request, "late")
        deadline = time.monotonic() + 2
        while client.as_dict().get("dropped.cancelled_response", 0) == 0 and time.monotonic() < deadline:
            assert client.poll_responses(timeout=0.05) == []
        counts = client.as_dict()
        assert counts["cancelled"] == 1 and counts["dropped.cancelled_response"] == 1 and counts.get("resent", 0) == 0


def test_first_post_waits_for_a_new_connection_only_as_long_as_it_takes():
    config = InferenceStreamConfig(connect_timeout_s=5.0)
    for _ in range(3):
        with InferenceServer(config) as server, IpInferenceClient(server.address, config) as client:
            started = time.monotonic()
            request_id = client.post("first")
            assert time.monotonic() - started < 1.0, "post waited for a connection that was already up"
            assert [request.id for request in server.poll_requests(8, timeout=2.0)] == [request_id]
