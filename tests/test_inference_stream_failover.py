"""Failover: SIGKILL or SIGSTOP a real server process while a client has requests outstanding on it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from zrl.nameresolve import make_name_resolver, names
from zrl.streams import InferenceStreamConfig, IpInferenceClient, NameResolvingInferenceClient, SocketConfig

SERVER_PROGRAM = textwrap.dedent("""
    import os, sys, time
    from zrl.nameresolve import make_name_resolver
    from zrl.streams import InferenceStreamConfig, NameResolvingInferenceServer

    url, root, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
    server = NameResolvingInferenceServer(make_name_resolver(url), root, InferenceStreamConfig(keepalive_ttl_s=1.0))
    print(server.address, flush=True)
    held = []
    while True:
        held += server.poll_requests(64, timeout=0.02)
        now = time.monotonic()
        due = [request for request in held if now - request.received_at >= hold]
        held = [request for request in held if now - request.received_at < hold]
        server.respond_many([(request, {"n": request.payload["n"], "pid": os.getpid()}) for request in due])
""")


def _start_server(url: str, root: str, hold: float) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-c", SERVER_PROGRAM, url, root, str(hold)],
                               stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline().strip()
    assert line.startswith("tcp://"), f"server process {process.pid} did not report its address: {line!r}"
    return process, line


def test_sigkilled_server_requests_are_answered_exactly_once_by_the_others(tmp_path):
    url = f"file://{tmp_path}/names"
    root = names.inference_stream("exp", "trial", "policy")
    resolver = make_name_resolver(url)
    processes: list[subprocess.Popen] = []
    client = None
    try:
        started = [_start_server(url, root, hold=0.8) for _ in range(3)]
        processes = [process for process, _ in started]
        config = InferenceStreamConfig(request_timeout_s=10.0, resolve_interval_s=0.1)
        client = NameResolvingInferenceClient(resolver, root, config)
        assert sorted(client.addresses) == sorted(address for _, address in started)

        ids = client.post_many({"n": n} for n in range(30))
        victim, victim_address = started[0]
        outstanding = client.outstanding_by_server()
        assert outstanding == {address: 10 for _, address in started}, outstanding
        victim_ids = [request_id for request_id in ids if client.server_of(request_id) == victim_address]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=5)

        responses = client.wait(ids, timeout=15.0)
        assert sorted(responses) == ids
        assert [responses[request_id]["n"] for request_id in ids] == list(range(30))
        assert len(victim_ids) == 10
        assert {responses[request_id]["pid"] for request_id in victim_ids} <= {p.pid for p in processes[1:]}
        assert client.poll_responses(timeout=1.0) == [], "no id is answered twice"
        counts = client.as_dict()
        assert counts["received"] == 30 and counts["resent"] == 10
        assert counts.get("dropped.duplicate", 0) == 0, "the killed server never answered, so nothing is a duplicate"
        assert victim_address not in client.addresses
    finally:
        if client is not None:
            client.close()
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=5)
            if process.stdout is not None:
                process.stdout.close()
        resolver.close()


def test_frozen_server_is_noticed_by_heartbeats_and_its_requests_move(tmp_path):
    url = f"file://{tmp_path}/names"
    root = names.inference_stream("exp", "trial", "policy")
    processes: list[subprocess.Popen] = []
    client = None
    try:
        started = [_start_server(url, root, hold=0.0) for _ in range(2)]
        processes = [process for process, _ in started]
        (victim, victim_address), (survivor, _) = started
        sockets = SocketConfig(heartbeat_interval_s=0.2, heartbeat_timeout_s=1.0)
        client = IpInferenceClient([address for _, address in started],
                                   InferenceStreamConfig(request_timeout_s=60.0, sockets=sockets))
        client.wait(client.post_many({"n": n} for n in range(4)), timeout=10.0)
        os.kill(victim.pid, signal.SIGSTOP)
        ids = client.post_many({"n": n} for n in range(10))
        assert client.outstanding_by_server()[victim_address] == 5
        responses = client.wait(ids, timeout=15.0)  # well below request_timeout_s
        assert {response["pid"] for response in responses.values()} == {survivor.pid}
        assert client.as_dict()["resent"] == 5
    finally:
        if client is not None:
            client.close()
        for process in processes:
            process.kill()
            process.wait(timeout=5)
            if process.stdout is not None:
                process.stdout.close()
