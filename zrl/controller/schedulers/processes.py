"""What the schedulers that run worker processes themselves share (local, and the Ray actors on their nodes):
starting a process that dies with its parent, signalling its process group, reading its exit code, and private
files for what a worker's launch holds (its environment may carry passwords)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

from zrl.controller.schedulers.base import JobState, WorkerJobStatus

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """In the child, before exec: ask Linux to send SIGTERM when the parent dies, even by SIGKILL.

    A parent that died before the prctl would never send it, hence the check after it. The signal only asks the
    worker to exit; its lifeline (`zrl.workers.lifeline`, told the pid by PARENT_PID_ENV) ends it if it hangs.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        os._exit(1)


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send `sig` to the process group led by `pid` (the worker and its helpers); a gone group is no error."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def exit_status(code: int | None, stopped: bool) -> WorkerJobStatus:
    """The job status of a worker process from its exit code (None: still running, as Popen.poll returns)."""
    if code is None:
        return WorkerJobStatus(JobState.RUNNING)
    if stopped:
        return WorkerJobStatus(JobState.CANCELLED, code, "stopped by the controller")
    if code == 0:
        return WorkerJobStatus(JobState.COMPLETED, 0)
    if code < 0:
        return WorkerJobStatus(JobState.FAILED, code, f"killed by signal {-code} ({signal.Signals(-code).name})")
    return WorkerJobStatus(JobState.FAILED, code, f"exited with code {code}")


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only: a job script or launch file holds the workers' environment (URLs
    with passwords)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)
