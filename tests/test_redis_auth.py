"""The Redis name service behind a password (`requirepass`) on a real redis-server: wrong or missing credentials are
a prompt, clear error with the password masked, and nobody without the password can register a server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_controller_e2e import ControllerRun

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


def test_nobody_without_the_password_registers_a_fake_server(redis_server_with_password):
    server = redis_server_with_password
    name = names.worker_control("echo", "t1", "server/0")
    attacker = make_name_resolver(url(server, "guessed"))
    try:
        with pytest.raises(NameServiceAuthError):
            attacker.add(name, "tcp://10.0.0.66:5555", replace=True)
    finally:
        attacker.close()
    owner = make_name_resolver(url(server, server.password))
    try:
        assert owner.find_subtree(names.trial_root("echo", "t1")) == []
    finally:
        owner.close()


def test_the_controller_reports_a_wrong_password_with_the_url_masked(tmp_path: Path, redis_server_with_password):
    run = ControllerRun(tmp_path, f"name_resolve={url(redis_server_with_password, 'wrong-secret-pw')}")
    assert run.wait(timeout=30) == 1, run.output
    assert "redis://***@127.0.0.1" in run.output or "redis://:***@127.0.0.1" in run.output, run.output
    assert "refused the credentials" in run.output and "wrong-secret-pw" not in run.output
    assert run.worker_pids() == {}
