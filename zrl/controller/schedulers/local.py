"""The local scheduler: one subprocess per worker on this machine, its output in its own log file.

Each worker runs in its own session (process group), so a Ctrl-C on the terminal reaches only the controller,
which then stops the workers; `stop` signals the worker's process group by its pid, so helper processes the
worker started go too. On Linux a worker also gets SIGTERM if the controller dies without stopping it, and exits
soon after even when its main loop hangs (its lifeline watches the parent pid). GPU workers get
`CUDA_VISIBLE_DEVICES` round-robin over the visible GPUs; a relaunched worker gets the GPUs it had.
"""

from __future__ import annotations

import functools
import itertools
import os
import signal
import subprocess
import time

from zrl.config import PARENT_PID_ENV
from zrl.controller.schedulers.base import Scheduler, WorkerJobStatus, WorkerLaunch
from zrl.controller.schedulers.processes import die_with_parent, exit_status, signal_group


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES when set, else what `nvidia-smi -L` lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [gpu.strip() for gpu in env.split(",") if gpu.strip() and gpu.strip() != "-1"]
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listing.stdout.splitlines()) if line.startswith("GPU ")]


class LocalScheduler(Scheduler):
    def __init__(self, gpus: list[str] | None = None):
        self.gpus = visible_gpus() if gpus is None else list(gpus)
        self._next_gpu = itertools.cycle(self.gpus) if self.gpus else None
        self._processes: dict[str, subprocess.Popen] = {}
        self._stopped: set[str] = set()
        self._devices: dict[str, list[str]] = {}

    def submit(self, launches: list[WorkerLaunch]) -> None:
        needed = max((launch.resources.gpus for launch in launches), default=0)
        if needed and not self.gpus:
            raise RuntimeError(f"workers {[la.worker_id for la in launches if la.resources.gpus]} need GPUs, "
                               "but no GPU is visible (CUDA_VISIBLE_DEVICES / nvidia-smi)")
        for launch in launches:
            old = self._processes.get(launch.worker_id)
            if old is not None and old.poll() is None:
                raise RuntimeError(f"worker {launch.worker_id} is still running (pid {old.pid}); stop it first")
            env = {**os.environ, **launch.env, PARENT_PID_ENV: str(os.getpid())}
            if launch.resources.gpus and self._next_gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = self._devices_for(launch)
            launch.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(launch.log_path, "ab") as log:
                self._processes[launch.worker_id] = subprocess.Popen(
                    list(launch.argv), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, preexec_fn=functools.partial(die_with_parent, os.getpid()))
            self._stopped.discard(launch.worker_id)

    def _devices_for(self, launch: WorkerLaunch) -> str:
        """The GPUs of a worker: the next ones in the cycle, and on a relaunch the ones it had before."""
        devices = self._devices.get(launch.worker_id)
        if devices is None or len(devices) != launch.resources.gpus:
            assert self._next_gpu is not None
            devices = [next(self._next_gpu) for _ in range(launch.resources.gpus)]
            self._devices[launch.worker_id] = devices
        return ",".join(devices)

    def pids(self) -> dict[str, int]:
        """The pid of every submitted worker's current process."""
        return {worker_id: proc.pid for worker_id, proc in self._processes.items()}

    def poll(self) -> dict[str, WorkerJobStatus]:
        return {worker_id: exit_status(proc.poll(), worker_id in self._stopped)
                for worker_id, proc in self._processes.items()}

    def stop(self, worker_ids: list[str] | None = None, timeout: float = 10.0) -> None:
        targets = {w: p for w, p in self._processes.items() if worker_ids is None or w in worker_ids}
        for worker_id, proc in targets.items():
            self._stopped.add(worker_id)
            if proc.poll() is None:
                signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in targets.values():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in targets.values():
            # The group may hold helpers even after the worker itself exited.
            signal_group(proc.pid, signal.SIGKILL)
            proc.wait()

    def dump_stacks(self, worker_ids: list[str]) -> None:
        for worker_id in worker_ids:
            proc = self._processes.get(worker_id)
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGUSR1)

    def describe(self, launches: list[WorkerLaunch]) -> str:
        lines = []
        for launch in launches:
            gpus = f"  [{launch.resources.gpus} GPU]" if launch.resources.gpus else ""
            lines.append(f"{launch.worker_id}: {' '.join(launch.argv)}  > {launch.log_path}{gpus}")
        return "\n".join(lines)
