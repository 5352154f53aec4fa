"""A process without the trial's control key tries to steer a running echo demo; the run must not notice."""

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
    run = ControllerRun(tmp_path, *SLOW)
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
