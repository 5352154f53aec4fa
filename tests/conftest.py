"""Shared fixtures: real services started on free ports, and the rule that CI never skips real parts.

Set ZRL_REQUIRE_REAL=1 (CI does) to turn "binary missing" skips into failures.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def require(condition: bool, reason: str) -> None:
    """Skip the calling test when `condition` is false, or fail it when ZRL_REQUIRE_REAL is set."""
    if condition:
        return
    if os.environ.get("ZRL_REQUIRE_REAL"):
        pytest.fail(f"{reason} (ZRL_REQUIRE_REAL is set, so this may not be skipped)")
    pytest.skip(reason)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class RedisServer:
    """A real redis-server on a free port of `host` (loopback by default), with no persistence, that a test may stop
    and restart; with `password`, clients must AUTH (`requirepass`)."""

    def __init__(self, workdir: Path, password: str | None = None, host: str = "127.0.0.1"):
        self.host = host
        self.port = free_port(host)
        self.workdir = workdir
        self.password = password
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The server's URL, without its password."""
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> None:
        # The password goes to redis-server on stdin, as a config file, so that it stays out of its argv.
        requirepass = [] if self.password is None else ["-"]
        self.process = subprocess.Popen(
            ["redis-server", *requirepass, "--port", str(self.port), "--bind", self.host, "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        assert self.process.stdin is not None
        if self.password is not None:
            self.process.stdin.write(f"requirepass {self.password}\n".encode())
        self.process.stdin.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on {self.host}:{self.port} within 10 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self, downtime: float = 0.0) -> None:
        self.stop()
        time.sleep(downtime)
        self.start()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require(shutil.which("redis-server") is not None,
            "redis-server is not installed (make test installs it with apt when run as root)")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server_with_password(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server started with `requirepass` (its `password`)."""
    require(shutil.which("redis-server") is not None,
            "redis-server is not installed (make test installs it with apt when run as root)")
    server = RedisServer(tmp_path, password="pw-" + os.urandom(8).hex())
    server.start()
    try:
        yield server
    finally:
        server.stop()
