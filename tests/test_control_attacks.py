"""A process without the trial's key attacks a running echo demo; the run must not notice.

With `security.curve=off` the signed control channel alone must refuse its commands and a replayed signed request.
With CURVE on (the default) its commands, samples and inference requests do not even get a connection, whichever way
it connects, and servers it registers in the name service get nothing: every refusal is counted and logged once per
kind, and the run's sample accounting is intact.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import zmq
from test_controller_e2e import ControllerRun, check_counts

from zrl import wire
from zrl.nameresolve import make_name_resolver, names
from zrl.streams.control import PROTOCOL_VERSION
from zrl.streams.control_key_file import control_key_path, read_control_key
from zrl.streams.curve import CurveKeys

WORKERS = ("server/0", "consumer/0", "producer/0", "producer/1")
COMMANDS = ("exit", "pause", "configure")
# Long enough to attack mid-run: 2 producers x 20 batches, each followed by a 0.5 s pause.
SLOW = ("workers.producer.config.batch_size=10", "workers.producer.config.interval_s=0.5")

# Knows the worker addresses (anyone who can list the name service does) and the protocol, but not the key.
ATTACKER = r"""
import hashlib, hmac, json, os, sys, time, uuid
import zmq
from zrl import wire

trial, version, targets = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
guessed_key = os.urandom(32)
context = zmq.Context()
answered = {}
for worker, address in targets.items():
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    for command in ("exit", "pause", "configure"):
        header = wire.encode({"v": version, "trial": trial, "sender": "controller", "recipient": worker,
                              "id": uuid.uuid4().hex, "time": time.time(), "nonce": uuid.uuid4().hex,
                              "command": command})[0]
        body = wire.encode({"config": {}})[0]
        forged = hmac.new(guessed_key, digestmod=hashlib.sha256)
        for frame in (header, body):
            forged.update(len(frame).to_bytes(8, "big"))
            forged.update(frame)
        sock.send_multipart([b"", b"", header, body])  # unsigned
        sock.send_multipart([b"", forged.digest(), header, body])  # signed with a guessed key
    answered[worker] = 0
    deadline = time.monotonic() + 0.5
    while sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
        sock.recv_multipart()
        answered[worker] += 1
    sock.close()
print(json.dumps(answered))
"""


def _addresses(run: ControllerRun) -> dict[str, str]:
    resolver = make_name_resolver(f"file://{run.run_dir / 'names'}")
    try:
        return {w: resolver.get(names.worker_control("echo", run.trial, w)) for w in WORKERS}
    finally:
        resolver.close()


def _replay_a_signed_request(run: ControllerRun, address: str, worker: str) -> list[bool]:
    """Send one correctly signed status request twice, as someone who captured it on the wire would; whether each
    was answered."""
    key = read_control_key(control_key_path(run.run_dir))
    header = wire.encode({"v": PROTOCOL_VERSION, "trial": run.trial, "sender": "controller", "recipient": worker,
                          "id": uuid.uuid4().hex, "time": time.time(), "nonce": uuid.uuid4().hex,
                          "command": "status"})[0]
    body = wire.encode({})[0]
    captured = [b"", key.sign([header, body]), header, body]
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    answered = []
    try:
        for _ in range(2):
            sock.send_multipart(captured)
            answered.append(bool(sock.poll(1000)) and bool(sock.recv_multipart()))
    finally:
        sock.close()
    return answered


def test_commands_without_the_key_and_a_replay_are_refused_counted_and_the_run_completes(tmp_path: Path):
    run = ControllerRun(tmp_path, *SLOW, "security.curve=off")  # the signed channel alone, as without CURVE
    run.wait_for_output("workers RUNNING")
    addresses = _addresses(run)
    attack = subprocess.run([sys.executable, "-c", ATTACKER, run.trial, str(PROTOCOL_VERSION), json.dumps(addresses)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert attack.returncode == 0, attack.stderr
    assert json.loads(attack.stdout) == dict.fromkeys(WORKERS, 0)  # not even an error reply
    assert _replay_a_signed_request(run, addresses["consumer/0"], "consumer/0") == [True, False]

    assert run.wait() == 0, run.output
    summary = run.summary()
    check_counts(summary, 2, 200)
    for worker in WORKERS:
        state = summary["workers"][worker]
        # Paused by the controller for the final count, unless done before; never exited, paused early or restarted.
        assert state["status"] in ("COMPLETED", "PAUSED") and state["restarts"] == 0
        control = state["last"]["control"]
        assert control["rejected.unsigned"] == control["rejected.forged"] == len(COMMANDS), (worker, control)
        assert control.get("rejected.replayed", 0) == (worker == "consumer/0"), (worker, control)
        log = (run.run_dir / "logs" / f"{worker.replace('/', '-')}.log").read_text()
        for kind in ("unsigned", "forged"):
            assert log.count(f"rejected a message ({kind})") == 1, log


# Knows every bound address and the servers' public key (public keys may leak), but holds none of the trial's secrets.
# Tries each target three ways: a plain socket, CURVE with keys of its own, and CURVE with the trial's server key.
CURVE_ATTACKER = r"""
import json, sys, time, uuid
import zmq
from zrl import wire

trial, version, server_key, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), json.loads(sys.argv[4])
context = zmq.Context()

def plain(sock):
    pass

def own_keys(sock):
    public, secret = zmq.curve_keypair()
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()[0], public, secret

def known_server_key(sock):
    public, secret = zmq.curve_keypair()
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_key, public, secret

def messages(kind, worker):
    if kind == "sample":
        return [wire.encode(["sample", [{"producer": "intruder", "seq": 0, "value": 1, "answer": 2}]])]
    if kind == "inference":
        return [wire.encode(["request", [[1, {"value": 1}]]])]
    return [[b"", b"", wire.encode({"v": version, "trial": trial, "sender": "controller", "recipient": worker,
                                    "id": uuid.uuid4().hex, "time": time.time(), "nonce": uuid.uuid4().hex,
                                    "command": command})[0], wire.encode({"config": {}})[0]]
            for command in ("exit", "pause", "configure")]

sockets, answered = [], {}
for kind, worker, address in targets:
    for connect in (plain, own_keys, known_server_key):
        sock = context.socket(zmq.PUSH if kind == "sample" else zmq.DEALER)
        sock.linger = 0
        sock.sndtimeo = 0
        connect(sock)
        sock.connect(address)
        for frames in messages(kind, worker):
            try:
                sock.send_multipart(frames)
            except zmq.Again:
                pass  # no connection to queue it to: what ZeroMQ does to a peer whose handshake fails
        sockets.append((f"{kind} {worker} {connect.__name__}", sock))
time.sleep(1.0)  # the connections are tried (and retried) meanwhile
for name, sock in sockets:
    answered[name] = 0
    while sock.socket_type == zmq.DEALER and sock.poll(0):
        sock.recv_multipart()
        answered[name] += 1
    sock.close(0)
print(json.dumps(answered))
"""


def _stream_addresses(run: ControllerRun) -> list[list[str]]:
    """[kind, worker, address] of every bound socket of the run: control sockets and the streams' servers."""
    resolver = make_name_resolver(f"file://{run.run_dir / 'names'}")
    try:
        targets = [["control", w, address] for w, address in _addresses(run).items()]
        targets += [["inference", "server/0", address]
                    for address in resolver.get_subtree(names.inference_stream("echo", run.trial, "echo"))]
        targets += [["sample", "consumer/0", address]
                    for address in resolver.get_subtree(names.sample_stream("echo", run.trial, "samples"))]
    finally:
        resolver.close()
    assert [kind for kind, _, _ in targets].count("inference") == 1 and len(targets) == len(WORKERS) + 2, targets
    return targets


def test_with_curve_no_command_sample_request_or_fake_server_gets_through_each_is_counted_and_the_run_completes(
        tmp_path: Path):
    from test_curve import refused_each_intruder

    run = ControllerRun(tmp_path, *SLOW)
    run.wait_for_output("workers RUNNING")
    server_key = CurveKeys.derive(read_control_key(control_key_path(run.run_dir))).server_public
    # Whoever can write the name service registers servers of its own; clients never complete a handshake with them.
    context = zmq.Context()
    fakes = {"inference": context.socket(zmq.ROUTER), "sample": context.socket(zmq.PULL)}
    connected = {kind: fake.get_monitor_socket(zmq.EVENT_ACCEPTED) for kind, fake in fakes.items()}
    for fake in fakes.values():
        fake.bind("tcp://127.0.0.1:*")
    resolver = make_name_resolver(f"file://{run.run_dir / 'names'}")
    try:
        targets = _stream_addresses(run)
        resolver.add_subentry(names.inference_stream("echo", run.trial, "echo"),
                              fakes["inference"].getsockopt_string(zmq.LAST_ENDPOINT), keepalive_ttl=5)
        resolver.add_subentry(names.sample_stream("echo", run.trial, "samples"),
                              fakes["sample"].getsockopt_string(zmq.LAST_ENDPOINT), keepalive_ttl=5)
        attack = subprocess.run([sys.executable, "-c", CURVE_ATTACKER, run.trial, str(PROTOCOL_VERSION),
                                 server_key.decode(), json.dumps(targets)],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert attack.returncode == 0, attack.stderr
        answered = json.loads(attack.stdout)
        assert len(answered) == 3 * len(targets) and set(answered.values()) == {0}, answered  # not even an error
        assert run.process.poll() is None, f"the run ended before the attack did; lengthen it:\n{run.output}"

        assert run.wait() == 0, run.output
        assert {kind: fake.poll(0) for kind, fake in fakes.items()} == {"inference": 0, "sample": 0}
        assert all(monitor.poll(0) for monitor in connected.values())  # the producers did try them
    finally:
        resolver.close()
        context.destroy(linger=0)
    summary = run.summary()
    check_counts(summary, 2, 200)  # no injected sample or request was taken, none of the run's was lost
    stats = {w: summary["workers"][w]["last"] for w in WORKERS}
    refusals = {f"{w} control": stats[w]["control"] for w in WORKERS}
    refusals["server/0 inference"] = stats["server/0"]["stats"]
    refusals["consumer/0 samples"] = stats["consumer/0"]["stats"]["samples"]
    for where, counts in refusals.items():
        assert refused_each_intruder(counts), (where, counts)
        assert counts["garbage"] == 0 and counts.get("rejected", 0) == 0, (where, counts)  # nothing reached the code
    for producer in ("producer/0", "producer/1"):  # their handshakes with the fake server failed, and were counted
        assert stats[producer]["stats"]["inference"].get("refused", 0) >= 1, stats[producer]["stats"]["inference"]
    for worker in WORKERS:
        log = (run.run_dir / "logs" / f"{worker.replace('/', '-')}.log").read_text()
        for kind in ("server_key", "client_key"):
            assert log.count(f"stream control: refused a connection ({kind})") == 1, log
