"""The Redis name service behind a password (`requirepass`) on a real redis-server: wrong or missing credentials are
a prompt, clear error with the password masked, and nobody without the password can register a server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import free_port, require
from test_controller_e2e import ControllerRun, check_counts

from zrl.nameresolve import NameServiceAuthError, make_name_resolver, names

pytestmark = pytest.mark.redis


def url(server, password: str | None) -> str:
    return server.url if password is None else server.url.replace("redis://", f"redis://:{password}@")


@pytest.mark.parametrize("password", [None, "wrong-secret-pw"])
def test_missing_or_wrong_credentials_fail_at_once_naming_the_masked_url(redis_server_with_password, password):
    resolver = make_name_resolver(url(redis_server_with_password, password))
    started = time.monotonic()
    try:
        with pytest.raises(NameServiceAuthError) as error:
            resolver.get("anything")
    finally:
        resolver.close()
    assert time.monotonic() - started < 5  # not retried as if the server were down
    message = str(error.value)
    assert f"127.0.0.1:{redis_server_with_password.port}/0" in message and "credentials" in message
    assert "wrong-secret-pw" not in message and redis_server_with_password.password not in message
    if password is not None:
        assert "redis://:***@127.0.0.1" in message


def test_nobody_without_the_password_registers_a_fake_server_in_a_running_trial(tmp_path: Path,
                                                                             redis_server_with_password):
    server = redis_server_with_password
    run = ControllerRun(tmp_path, f"name_resolve={url(server, server.password)}",
                        "workers.producer.config.batch_size=10", "workers.producer.config.interval_s=0.2")
    run.wait_for_output("workers RUNNING")
    fakes = {names.inference_stream("echo", run.trial, "echo") + "/fake": "tcp://127.0.0.1:9",
             names.sample_stream("echo", run.trial, "samples") + "/fake": "tcp://127.0.0.1:9",
             names.worker_control("echo", run.trial, "consumer/0"): "tcp://127.0.0.1:9"}
    attacker = make_name_resolver(url(server, "guessed"))
    try:
        for name, address in fakes.items():
            with pytest.raises(NameServiceAuthError):
                attacker.add(name, address, replace=True)
    finally:
        attacker.close()
    owner = make_name_resolver(url(server, server.password))
    try:
        assert "tcp://127.0.0.1:9" not in owner.get_subtree(names.trial_root("echo", run.trial))
    finally:
        owner.close()
    assert run.wait() == 0, run.output
    check_counts(run.summary(), 2, 200)


def test_the_controller_reports_a_wrong_password_with_the_url_masked(tmp_path: Path, redis_server_with_password):
    run = ControllerRun(tmp_path, f"name_resolve={url(redis_server_with_password, 'wrong-secret-pw')}")
    assert run.wait(timeout=30) == 1, run.output
    assert "redis://***@127.0.0.1" in run.output or "redis://:***@127.0.0.1" in run.output, run.output
    assert "refused the credentials" in run.output and "wrong-secret-pw" not in run.output
    assert run.worker_pids() == {}


def _tls_material(directory: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl command."""
    files = {name: directory / name for name in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt")}
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=zrl-test-ca",
         "-keyout", files["ca.key"], "-out", files["ca.crt"]],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", files["server.key"],
         "-out", files["server.csr"]],
        ["x509", "-req", "-in", files["server.csr"], "-CA", files["ca.crt"], "-CAkey", files["ca.key"],
         "-CAcreateserial", "-days", "1", "-out", files["server.crt"], "-extfile", "/dev/stdin"],
    ]
    for step in steps:
        subprocess.run(["openssl", *map(str, step)], input=b"subjectAltName=IP:127.0.0.1\n", check=True,
                       capture_output=True, timeout=60)
    return files


@pytest.fixture
def tls_redis(tmp_path: Path):
    require(shutil.which("redis-server") is not None and shutil.which("openssl") is not None,
            "redis-server and openssl are needed for the TLS test")
    files = _tls_material(tmp_path)
    port, password = free_port(), "tls-pw-" + os.urandom(6).hex()
    process = subprocess.Popen(
        ["redis-server", "-", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path), "--tls-cert-file", str(files["server.crt"]),
         "--tls-key-file", str(files["server.key"]), "--tls-ca-cert-file", str(files["ca.crt"]),
         "--tls-auth-clients", "no"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert process.stdin is not None
    process.stdin.write(f"requirepass {password}\n".encode())
    process.stdin.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={files['ca.crt']}", password
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_demo_runs_on_redis_over_tls_with_a_password(tmp_path: Path, tls_redis):
    url_without_password, password = tls_redis
    with pytest.raises(NameServiceAuthError):
        resolver = make_name_resolver(url_without_password)
        try:
            resolver.get("anything")
        finally:
            resolver.close()
    password_file = tmp_path / "redis.password"
    password_file.write_text(password)
    run = ControllerRun(tmp_path, f"name_resolve={url_without_password}", f"name_resolve_password_file={password_file}")
    assert run.wait() == 0, run.output
    check_counts(run.summary(), 2, 200)
    assert password not in run.output
    assert not any(password.encode() in path.read_bytes() for path in run.run_dir.rglob("*") if path.is_file())
