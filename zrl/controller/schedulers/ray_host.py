"""The Ray actor that runs one worker's process on its node (scheduler=ray).

The actor gets only the path of the worker's launch file (0600, in the run directory on the shared filesystem):
argv, environment, log file and working directory never pass through Ray, whose control store, dashboard and logs
would otherwise hold the environment. The process runs in its own session, so signals reach its helpers too, and
it dies with the actor: Linux sends it SIGTERM when the actor's process ends, and its lifeline (told the actor's
pid) ends it if it hangs. The actor stays up while its worker runs and answers for it: its exit code, signals, a
stop.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from zrl.config import PARENT_PID_ENV
from zrl.controller.schedulers.processes import die_with_parent, signal_group


def launch_spec(argv: tuple[str, ...], env: dict[str, str], log_path: Path, cwd: Path) -> str:
    """The launch file's text for one worker."""
    return json.dumps({"argv": list(argv), "env": env, "log_path": str(log_path), "cwd": str(cwd)})


class WorkerHost:
    """Owns one worker process on the node where Ray placed this actor."""

    def __init__(self, launch_file: str):
        self._launch_file = Path(launch_file)
        self._process: subprocess.Popen | None = None

    def start(self) -> dict[str, Any]:
        """Start the worker; returns its pid, this node's Ray id and host name."""
        import ray

        if self._process is not None:
            raise RuntimeError(f"the worker of {self._launch_file} was started already (pid {self._process.pid})")
        spec = json.loads(self._launch_file.read_text())
        env = {**os.environ, **spec["env"], PARENT_PID_ENV: str(os.getpid())}
        log_path = Path(spec["log_path"])
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            self._process = subprocess.Popen(
                spec["argv"], cwd=spec["cwd"], env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=functools.partial(die_with_parent, os.getpid()))
        return {"pid": self._process.pid, "node_id": ray.get_runtime_context().get_node_id(),
                "host": socket.gethostname()}

    def exit_code(self) -> int | None:
        """The worker's exit code (negative: the signal that killed it), or None while it runs."""
        return None if self._process is None else self._process.poll()

    def send_signal(self, signum: int) -> None:
        """Signal the worker itself (SIGUSR1: write its threads' stacks to its log)."""
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signum)

    def stop(self, timeout: float) -> int | None:
        """SIGTERM to the worker's process group, SIGKILL to what is left after `timeout`; returns its exit code."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        signal_group(process.pid, signal.SIGKILL)  # helpers may outlive the worker itself
        return process.wait()
