"""Secrets stay where they belong: the control key, the CURVE secret keys derived from it and the name service's
password appear in no file, argv, log, name or output other than the ones meant to hold them, and the run directory is
private."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_controller_e2e import ECHO, ControllerRun, check_counts

from zrl.config import NAME_RESOLVE_PASSWORD_ENV
from zrl.streams.control_key_file import control_key_path, read_control_key
from zrl.streams.curve import CurveKeys

SLOW = ("workers.producer.config.batch_size=10", "workers.producer.config.interval_s=0.1")


def files_under(root: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}


def worker_argv(run: ControllerRun) -> list[bytes]:
    return [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in run.worker_pids().values()]


def test_the_control_and_curve_keys_are_in_a_private_file_only_not_in_argv_names_logs_config_or_summary(
        tmp_path: Path):
    run = ControllerRun(tmp_path, *SLOW)
    run.wait_for_output("workers RUNNING")
    key_file = control_key_path(run.run_dir)
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = read_control_key(key_file)
    curve = CurveKeys.derive(key)
    secrets = {"control key": key.hex().encode(), "CURVE server secret": curve.server_secret,
               "CURVE client secret": curve.client_secret}
    argv = worker_argv(run)
    assert len(argv) == 4 and [what for what, secret in secrets.items() if any(secret in a for a in argv)] == []
    names = files_under(run.run_dir / "names")
    assert names and [what for what, secret in secrets.items() if any(secret in d for d in names.values())] == []
    assert run.wait() == 0, run.output
    check_counts(run.summary(), 2, 200)
    assert run.run_dir.stat().st_mode & 0o777 == 0o700
    assert (run.run_dir / "names").stat().st_mode & 0o777 == 0o700
    assert not key_file.exists()  # removed once no worker needs it
    leaks = [(what, str(path)) for path, data in files_under(tmp_path).items()
             for what, secret in secrets.items() if secret in data]
    assert leaks == []  # logs, config.json, summary.json, the controller's output


@pytest.mark.parametrize("scheduler", ["local", "slurm"])
def test_the_dry_run_masks_the_name_service_password(tmp_path: Path, scheduler: str):
    result = subprocess.run(
        [sys.executable, "-m", "zrl.controller", str(ECHO), "--dry-run", f"scheduler={scheduler}",
         "name_resolve=redis://admin:hunter2-pw@127.0.0.1:6379/0"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "127.0.0.1:6379" in result.stdout and "launch plan" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr


def _password_leaks(run: ControllerRun, password: str) -> list[str]:
    found = [str(path) for path, data in files_under(run.run_dir).items() if password.encode() in data]
    return found + (["controller output"] if password in run.output else [])


@pytest.mark.redis
def test_config_summary_and_logs_hold_no_redis_password(tmp_path: Path, redis_server_with_password):
    server = redis_server_with_password
    run = ControllerRun(tmp_path, f"name_resolve=redis://:{server.password}@127.0.0.1:{server.port}/0")
    assert run.wait() == 0, run.output
    check_counts(run.summary(), 2, 200)
    assert run.summary()["exit_code"] == 0
    assert _password_leaks(run, server.password) == []
    assert '"name_resolve": "redis://***@127.0.0.1' in (run.run_dir / "config.json").read_text()


@pytest.mark.redis
def test_the_redis_password_can_come_from_a_file_or_the_environment(tmp_path: Path, redis_server_with_password,
                                                                    monkeypatch: pytest.MonkeyPatch):
    server = redis_server_with_password
    password_file = tmp_path / "redis.password"
    password_file.write_text(server.password + "\n")
    by_file = ControllerRun(tmp_path, f"name_resolve={server.url}", f"name_resolve_password_file={password_file}")
    assert by_file.wait() == 0, by_file.output
    assert _password_leaks(by_file, server.password) == []

    monkeypatch.setenv(NAME_RESOLVE_PASSWORD_ENV, server.password)
    by_env = ControllerRun(tmp_path, f"name_resolve={server.url}")
    assert by_env.wait() == 0, by_env.output
    assert _password_leaks(by_env, server.password) == []
    check_counts(by_env.summary(), 2, 200)
