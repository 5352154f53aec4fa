# python benchmarks/control_hmac.py
"""What signing costs on the control channel, per request: the client stamps and signs it (time, nonce, HMAC-SHA256),
and the worker checks its signature, decodes it, and checks its recipient, age and nonce. The floor, in the same run:
the same request framed and decoded without any of that; the difference is what signing adds. A reply costs the
same again. For scale, the median round trip of a `status` request to a worker over loopback, signatures included.

Requests: `status` (empty body, as the controller sends every status interval) and `configure` with a 4 KiB config.
The figures go to the "control_hmac" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
import uuid

from report import markdown_table, update_section

from zrl import wire
from zrl.streams.control import (
    PROTOCOL_VERSION,
    ControlClient,
    ControlServer,
    _header_frame,
    _open,
    _signed_frames,
)
from zrl.streams.control_auth import ControlKey, ReplayGuard

TARGET_US = 50.0


def request_parts(command: str, body_bytes: int) -> tuple[dict, list]:
    header = {"v": PROTOCOL_VERSION, "trial": "bench", "sender": "controller", "recipient": "rollout/0",
              "id": uuid.uuid4().hex, "command": command}
    body = {"config": {"prompt_template": "x" * body_bytes}} if body_bytes else {}
    return header, wire.encode(body)


PASSES = 15


def _best_us(passes: list[float], count: int) -> float:
    """Microseconds per message in the fastest pass: the cost itself, less the time other processes took the core."""
    return min(passes) / count * 1e6


def per_request_us(command: str, body_bytes: int, count: int) -> tuple[float, float]:
    """Microseconds per request for both ends together (best of PASSES passes, the two kinds interleaved): unsigned
    framing (encode the header, decode header and body), and the signed protocol (stamp, sign, check signature,
    recipient, age and nonce)."""
    key = ControlKey.generate()
    header, body_frames = request_parts(command, body_bytes)
    plain_passes, signed_passes = [], []
    for _ in range(PASSES):
        started = time.perf_counter()
        for _ in range(count):
            frames = [b"", b"", _header_frame(header), *body_frames]
            wire.decode([frames[2]])
            wire.decode(frames[3:])
        plain_passes.append(time.perf_counter() - started)
        guard = ReplayGuard()
        started = time.perf_counter()
        for _ in range(count):
            checked, _ = _open(_signed_frames(key, header, body_frames), key, "rollout/0")
            if guard.check(checked["time"], checked["nonce"]) is not None:
                raise AssertionError("a fresh message was refused")
        signed_passes.append(time.perf_counter() - started)
    return _best_us(plain_passes, count), _best_us(signed_passes, count)


def status_round_trip_us(count: int) -> float:
    key = ControlKey.generate()
    server = ControlServer("bench", "w/0", key=key)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            request = server.recv(0.05)
            if request is not None:
                server.reply(request, {"status": "RUNNING"})

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = ControlClient("bench", key=key)
    client.connect("w/0", server.address)
    try:
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            if not client.request("w/0", "status", timeout=5)["w/0"].ok:
                raise AssertionError("status request failed")
            samples.append((time.perf_counter() - started) * 1e6)
        return statistics.median(samples)
    finally:
        client.close()
        stop.set()
        thread.join(timeout=5)
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=5000, help="messages per pass")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows = []
    for command, body_bytes in (("status", 0), ("configure", 4096)):
        plain_us, signed_us = per_request_us(command, body_bytes, args.count)
        added = signed_us - plain_us
        rows.append([f"{command} ({body_bytes} B body)", f"{plain_us:.1f}", f"{signed_us:.1f}", f"{added:.1f}",
                     "yes" if added < TARGET_US else "NO"])
    round_trip = status_round_trip_us(1000)
    table = markdown_table(["request", "unsigned framing (us)", "signed (us)", "added by signing (us)",
                            f"added < {TARGET_US:g} us"], rows)
    body = (f"{table}\n\nBoth ends of one request together, in one process: the client builds and signs it, the "
            f"worker checks and decodes it; the fastest of {PASSES} passes of {args.count} requests. A reply costs the "
            f"same again. For scale: a signed `status` round trip to a worker thread over loopback takes "
            f"{round_trip:.0f} us (median). Load average at the start: {load:.1f}.")
    print(body)
    if not args.no_doc:
        update_section("control_hmac", "Control channel: cost of signed messages", "make bench-control",
                       body)


if __name__ == "__main__":
    main()
