"""The echo demo through `python -m zrl.controller` on a real Redis, hit during the run by a Redis restart, a SIGKILL
of one of its two inference servers, a flood of garbage on every bound port and a SIGSTOP/SIGCONT of a producer:
the run completes, and every sample and every garbage message is accounted for."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq
from test_controller_e2e import ControllerRun, check_samples, signal_if_alive
from test_nameresolve import eventually

from zrl.nameresolve import NameEntryNotFoundError, NameResolver, make_name_resolver, names
from zrl.streams.control_key_file import control_key_path, read_control_key
from zrl.streams.curve import CurveKeys, secure_client

PRODUCERS = 2
PER_PRODUCER = 400
WORKERS = ("server/0", "server/1", "consumer/0", "producer/0", "producer/1")
# Each producer posts 40 batches of 10 with a 0.5 s pause after each, so the run lasts 20 s at least: longer than
# the chaos below. A killed server is relaunched: a user expects a crashed inference server back, not a failed run.
# A run that lost a sample would wait for it forever: max_run_s ends it with its summary written.
CHAOS_RUN = (
    "timeouts.max_run_s=60", "workers.server.count=2", "workers.server.restart=on_failure", "workers.server.max_restarts=1",
    f"workers.producer.config.num_samples={PER_PRODUCER}", "workers.producer.config.batch_size=10",
    "workers.producer.config.interval_s=0.5", f"workers.consumer.config.expected_samples={PRODUCERS * PER_PRODUCER}",
)
HOLD_S = 1.5
"""How long the server to be killed is stopped first, so that the producers' requests wait on it when it dies."""
FREEZE_S = 2.0
"""How long a producer stays stopped after the Redis restart: under the controller's lost_after_s and the keepalive
TTL of its names."""
FLOOD_MESSAGES = 800
"""Garbage messages sent to each bound port: under its receive high-water mark (1000), so a worker that is slow to
read them never stops reading the connection, which ZeroMQ's heartbeat would then close with the rest unread."""
BOUND_PORTS = Counter(control=len(WORKERS), inference_stream=2, sample_stream=1)
"""The bound sockets a running echo demo registers, by kind of name."""


@pytest.fixture
def chaos_run(tmp_path: Path, redis_server) -> Iterator[ControllerRun]:
    run = ControllerRun(tmp_path, f"name_resolve={redis_server.url}", *CHAOS_RUN)
    try:
        yield run
    finally:
        run.close()


@pytest.fixture
def flooder() -> Iterator[zmq.Context]:
    """The context of the garbage peers. They stay connected until the test ends: a peer that closed at once would
    have its connection reset by the kernel at the worker's next heartbeat, dropping what the worker had not read."""
    context = zmq.Context()
    try:
        yield context
    finally:
        context.destroy(linger=0)


@pytest.fixture
def resolver(redis_server) -> Iterator[NameResolver]:
    with make_name_resolver(redis_server.url) as made:
        yield made


@pytest.mark.redis
@pytest.mark.slow
def test_echo_demo_survives_chaos_and_accounts_for_every_sample(chaos_run: ControllerRun, redis_server,
                                                                 resolver: NameResolver, flooder: zmq.Context):
    run = chaos_run
    run.wait_for_output("workers RUNNING", timeout=40)
    servers_before = set(streams_in(bound_ports(resolver, run.trial), "inference_stream"))
    kill_a_server_holding_requests(run, resolver)
    with a_producer_frozen(run, resolver):
        # The frozen producer cannot re-register its names while it is stopped: it is not LOST for that.
        redis_server.restart(downtime=0.1)  # shorter than any keepalive refresh period
        time.sleep(FREEZE_S)
    ports = wait_for_bound_ports(resolver, run)
    insider_keys = CurveKeys.derive(read_control_key(control_key_path(run.run_dir)))
    flood(flooder, ports, garbage_messages(FLOOD_MESSAGES), insider_keys)
    assert run.process.poll() is None, f"the run ended before the chaos did; lengthen it:\n{run.output}"

    assert run.wait(timeout=80) == 0, run.output
    summary = run.summary()
    assert summary["workers"]["consumer/0"]["status"] == "COMPLETED"
    assert {w: s["restarts"] for w, s in summary["workers"].items()} == {w: int(w == "server/1") for w in WORKERS}
    check_samples(summary, PRODUCERS, PER_PRODUCER)
    killed = servers_before - set(streams_in(ports, "inference_stream"))
    check_requests_of_the_killed_server_answered(run, summary, killed)
    check_garbage_counted(summary)
    assert run.worker_pids() == {}


def kill_a_server_holding_requests(run: ControllerRun, resolver: NameResolver) -> None:
    """SIGKILL server/1 while the producers wait on it, and wait for its relaunch to register."""
    control = names.worker_control("echo", run.trial, "server/1")
    old_address = resolver.get(control)
    pid = run.worker_pids()["server/1"]
    os.kill(pid, signal.SIGSTOP)  # the producers' next requests to it go unanswered
    time.sleep(HOLD_S)
    os.kill(pid, signal.SIGKILL)
    run.wait_for_output("worker server/1 failed (its process ended (FAILED: killed by signal 9 (SIGKILL)))")
    assert eventually(lambda: value_or_none(resolver, control) not in (None, old_address), timeout=30), run.output


@contextlib.contextmanager
def a_producer_frozen(run: ControllerRun, resolver: NameResolver) -> Iterator[None]:
    """Stop producer/0 in the middle of its work for the block, then let it go on."""
    status = names.worker_status("echo", run.trial, "producer/0")
    assert eventually(lambda: value_or_none(resolver, status) == "RUNNING", timeout=10), run.output
    pid = run.worker_pids()["producer/0"]
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        signal_if_alive(pid, signal.SIGCONT)


def value_or_none(resolver: NameResolver, name: str) -> str | None:
    try:
        return resolver.get(name)
    except NameEntryNotFoundError:
        return None


def streams_in(ports: dict[str, str], kind: str) -> list[str]:
    """The addresses among `ports` registered under names of `kind` (control, inference_stream, sample_stream)."""
    return [address for key, address in ports.items() if key.split("/")[2] == kind]


def bound_ports(resolver: NameResolver, trial: str) -> dict[str, str]:
    """Name -> address of every socket the trial's workers bound and registered (control, servers, consumers)."""
    registered = {key: value_or_none(resolver, key) for key in resolver.find_subtree(names.trial_root("echo", trial))}
    return {key: address for key, address in registered.items() if address and address.startswith("tcp://")}


def wait_for_bound_ports(resolver: NameResolver, run: ControllerRun, timeout: float = 20) -> dict[str, str]:
    """The bound ports, once every worker and stream has registered its socket again after the Redis restart."""
    ports: dict[str, str] = {}

    def complete() -> bool:
        nonlocal ports
        ports = bound_ports(resolver, run.trial)
        return Counter(key.split("/")[2] for key in ports) == BOUND_PORTS

    assert eventually(complete, timeout=timeout, poll=0.1), f"registered: {sorted(ports)}; run:\n{run.output}"
    return ports


def garbage_messages(count: int, seed: int = 0) -> list[list[bytes]]:
    """`count` messages that no zrl socket accepts: broken msgpack, a wrong wire version, a body of the wrong shape,
    a control message with a broken header, and random frames."""
    rng = random.Random(seed)
    kinds = [[b"\xc1junk"], [msgpack.packb([99, ["sample", []]])], [msgpack.packb([1, {"not": "a batch"}])],
             [b"", b"", b"\xc1", b"x"]]
    messages = []
    for i in range(count):
        if i % 2 == 0:
            messages.append(kinds[i // 2 % len(kinds)])
        else:
            messages.append([rng.randbytes(rng.randint(1, 64)) for _ in range(rng.randint(1, 4))])
    return messages


def flood(context: zmq.Context, ports: dict[str, str], messages: list[list[bytes]], keys: CurveKeys) -> None:
    """Queue every message to every port at once, each from a peer of the right socket type that stays connected.
    The peers hold the trial's CURVE keys, so the garbage gets past the handshake to the decoders."""
    sockets = []
    for key, address in ports.items():
        sock = context.socket(zmq.PUSH if "/sample_stream/" in key else zmq.DEALER)
        secure_client(sock, keys)
        sock.setsockopt(zmq.SNDHWM, len(messages) + 1)
        sock.setsockopt(zmq.SNDTIMEO, 10_000)
        sock.connect(address)
        sockets.append(sock)
    for frames in messages:
        for sock in sockets:
            sock.send_multipart(frames)


def check_requests_of_the_killed_server_answered(run: ControllerRun, summary: dict, killed: set[str]) -> None:
    """The killed server died holding requests. The producers re-sent them before its relaunch registered, when
    server/0 was the only live server, and every request was answered once."""
    assert len(killed) == 1, killed
    logs = "".join(log_of(run, f"producer-{i}") for i in range(PRODUCERS))
    resends = re.findall(rf"^(\S+ \S+) .* re-sending (\d+) request\(s\) elsewhere: lost the connection to server "
                         rf"{re.escape(killed.pop())} ", logs, re.MULTILINE)
    registered = re.findall(r"^(\S+ \S+) .* registered control address", log_of(run, "server-1"), re.MULTILINE)
    assert resends and len(registered) == 2, (resends, registered)
    assert all(at < registered[1] and int(count) > 0 for at, count in resends), (resends, registered)
    for i in range(PRODUCERS):
        inference = summary["workers"][f"producer/{i}"]["last"]["stats"]["inference"]
        assert inference["received"] == PER_PRODUCER and inference.get("cancelled", 0) == 0, inference
        assert inference["sent"] == PER_PRODUCER + inference["resent"], inference


def log_of(run: ControllerRun, worker: str) -> str:
    return (run.run_dir / "logs" / f"{worker}.log").read_text()


def check_garbage_counted(summary: dict) -> None:
    """Every garbage message was dropped and counted by the socket it reached: as garbage, or on a control socket
    as garbage or rejected (a message framed like a control request but unsigned is refused as not authentic)."""
    workers = summary["workers"]
    for worker in WORKERS:
        control = workers[worker]["last"]["control"]
        assert control.get("garbage", 0) + control.get("rejected", 0) == FLOOD_MESSAGES, (worker, control)
    servers = [workers[f"server/{i}"]["last"]["stats"] for i in range(2)]
    assert sum(server["garbage"] for server in servers) == FLOOD_MESSAGES * BOUND_PORTS["inference_stream"], servers
    consumer = workers["consumer/0"]["last"]["stats"]["samples"]
    assert consumer["garbage"] == FLOOD_MESSAGES * BOUND_PORTS["sample_stream"], consumer
