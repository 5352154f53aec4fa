"""The demo experiment end to end through `python -m zrl.controller` with the local scheduler."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import require

from zrl.workers.drills import DRILL_ENV

ROOT = Path(__file__).resolve().parent.parent
ECHO = ROOT / "experiments" / "echo.py"


class ControllerRun:
    """A controller process running experiments/echo.py with its output in a file."""

    def __init__(self, tmp_path: Path, *overrides: str, sigint_ignored: bool = False, drill: str = ""):
        """`sigint_ignored`: start it as a shell without job control starts a background job, SIGINT ignored;
        `drill`: $ZRL_DRILL for its workers (zrl.workers.drills)."""
        self.trial = f"t{uuid.uuid4().hex[:8]}"
        self.run_root = tmp_path / "runs"
        self.run_dir = self.run_root / "echo" / self.trial
        self.output_path = tmp_path / f"{self.trial}.out"
        argv = [sys.executable, "-m", "zrl.controller", str(ECHO), f"trial={self.trial}",
                f"run_root={self.run_root}", "progress_interval_s=0.5", *overrides]
        with open(self.output_path, "w") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                env={**os.environ, DRILL_ENV: drill} if drill else None,
                preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None)

    @property
    def output(self) -> str:
        return self.output_path.read_text()

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"controller still running after {timeout} s; output:\n{self.output}") from None

    def wait_for_output(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the controller output:\n{self.output}")
            time.sleep(0.05)

    def worker_pids(self) -> dict[str, int]:
        """Pids of this trial's worker processes, found by their command lines."""
        pids = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"zrl.workers" in args and self.trial.encode() in args:
                group = args[args.index(b"--group") + 1].decode()
                index = args[args.index(b"--index") + 1].decode()
                pids[f"{group}/{index}"] = int(entry.name)
        return pids

    def summary(self) -> dict:
        return json.loads((self.run_dir / "summary.json").read_text())

    def close(self) -> None:
        """Stop the controller if it still runs (it stops its workers), then kill any worker of the trial it left."""
        for pid in self.worker_pids().values():
            signal_if_alive(pid, signal.SIGCONT)  # a stopped worker could not act on its exit
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid in self.worker_pids().values():
            signal_if_alive(pid, signal.SIGKILL)


def signal_if_alive(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def alive(pid: int) -> bool:
    """True while `pid` is a live process (a zombie awaiting its reaper counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def check_samples(summary: dict, producers: int, per_producer: int) -> None:
    """Every sample a producer produced was sent once, received once and checked, and the report balances."""
    workers = summary["workers"]
    producer_stats = [workers[f"producer/{i}"]["last"]["stats"] for i in range(producers)]
    consumer = workers["consumer/0"]["last"]["stats"]
    assert [stats["accounting"]["produced"] for stats in producer_stats] == [per_producer] * producers
    sent = sum(stats["samples"]["sent"] for stats in producer_stats)
    assert sent == consumer["samples"]["received"] == consumer["distinct"] == producers * per_producer
    assert consumer["accounting"] == {"received": sent, "consumed": sent, "garbage": 0, "received_from": {
        stats["accounting"]["incarnation"]: per_producer for stats in producer_stats}}
    assert consumer["duplicates"] == 0 and consumer["wrong_answers"] == 0
    assert sum(stats["samples"]["dropped"] for stats in producer_stats) == 0
    assert consumer["samples"]["dropped"] == 0
    accounting = summary["sample_accounting"]
    assert accounting["balanced"] is True and accounting["in_flight_at_stop"] == 0, accounting
    assert accounting["produced"] == accounting["received"] == accounting["consumed"] == sent, accounting


def check_counts(summary: dict, producers: int, per_producer: int) -> None:
    check_samples(summary, producers, per_producer)
    assert summary["workers"]["consumer/0"]["last"]["stats"]["samples"]["garbage"] == 0
    server = summary["workers"]["server/0"]["last"]["stats"]
    assert server["received"] == server["sent"] == producers * per_producer


def test_demo_on_the_default_file_name_service(tmp_path: Path):
    run = ControllerRun(tmp_path, "workers.producer.count=3", "workers.producer.config.num_samples=150",
                        "workers.consumer.config.expected_samples=450")
    assert run.wait() == 0, run.output
    assert "all 5 workers RUNNING" in run.output and "done in" in run.output
    assert "| samples " in run.output and "/s) | batches " in run.output  # progress lines
    summary = run.summary()
    check_counts(summary, 3, 150)
    assert all(w["restarts"] == 0 for w in summary["workers"].values())
    assert summary["workers"]["consumer/0"]["status"] == "COMPLETED"
    config = json.loads((run.run_dir / "config.json").read_text())
    assert config["workers"]["producer"]["count"] == 3 and config["trial"] == run.trial
    for worker in ("server-0", "consumer-0", "producer-0", "producer-2"):
        assert "registered control address" in (run.run_dir / "logs" / f"{worker}.log").read_text()
    # The trial's names are cleared and no worker outlives the run.
    assert [p for p in (run.run_dir / "names").rglob("*") if p.is_file()] == []
    assert run.worker_pids() == {}


@pytest.mark.redis
def test_demo_on_a_real_redis(tmp_path: Path, redis_server):
    import redis

    run = ControllerRun(tmp_path, f"name_resolve={redis_server.url}")
    assert run.wait() == 0, run.output
    check_counts(run.summary(), 2, 200)
    assert not (run.run_dir / "names").exists()
    keys = list(redis.Redis.from_url(redis_server.url).scan_iter(match=f"*{run.trial}*"))
    assert keys == []


def test_bad_overrides_are_clear_errors_and_start_nothing(tmp_path: Path):
    run = ControllerRun(tmp_path, "workers.nonexistent=3", "workers.producer.count=abc")
    assert run.wait() == 2
    assert "workers.nonexistent: unknown key; allowed: consumer, producer, server" in run.output
    assert "workers.producer.count: expected an int, got 'abc'" in run.output
    assert not run.run_dir.exists()
    assert run.worker_pids() == {}


def test_worker_host_auto_advertises_a_non_loopback_address(tmp_path: Path):
    # On a stock /etc/hosts the host name resolves to a loopback address, which other nodes cannot reach.
    run = ControllerRun(tmp_path, "worker_host=auto")
    assert run.wait() == 0, run.output
    log = (run.run_dir / "logs" / "server-0.log").read_text()
    address = re.search(r"registered control address tcp://([^:]+):", log)[1]
    assert not ipaddress.ip_address(address).is_loopback, log


def test_a_second_controller_of_a_running_trial_is_refused_and_clears_nothing(tmp_path: Path):
    first = ControllerRun(tmp_path, "workers.producer.config.batch_size=10", "workers.producer.config.interval_s=0.2")
    first.wait_for_output("workers RUNNING")
    second = ControllerRun(tmp_path, f"trial={first.trial}")
    assert second.wait(timeout=30) == 1, second.output
    assert f"trial echo/{first.trial} is being run by the controller" in second.output
    assert first.wait() == 0, first.output
    check_counts(first.summary(), 2, 200)


def test_the_wildcard_worker_host_is_refused_before_anything_starts(tmp_path: Path):
    run = ControllerRun(tmp_path, "worker_host=0.0.0.0")
    assert run.wait() == 2
    assert "worker_host: 0.0.0.0 is the wildcard address" in run.output, run.output
    assert not run.run_dir.exists()
    assert run.worker_pids() == {}


def test_a_worker_advertises_the_address_that_routes_to_the_name_service(tmp_path: Path):
    from zrl.hosts import interface_addresses
    from zrl.workers.__main__ import advertised_host

    own = [address for address in interface_addresses() if not ipaddress.ip_address(address).is_loopback]
    require(bool(own), "this machine has no non-loopback IPv4 interface")
    for address in own:
        host, reason = advertised_host("auto", f"redis://{address}:6379/0")
        assert host == address and "routes to the name service" in reason
    host, reason = advertised_host("auto", f"file://{tmp_path}/names")
    assert not ipaddress.ip_address(host).is_loopback and "routes" not in reason
    assert advertised_host("10.9.8.7", "file:///x") == ("10.9.8.7", "given by --host (the experiment's worker_host)")
    with pytest.raises(RuntimeError, match="--host 0.0.0.0 is the wildcard address"):
        advertised_host("0.0.0.0", "file:///x")
