# python benchmarks/controller.py
"""Controller start-up and shut-down: launch -> all workers RUNNING, and stop -> all exited, for 4, 16 and 32 light
workers (echo servers) on the local scheduler and the file name service.

The floor, measured in the same run: N bare Python processes that import the same libraries (zmq, msgpack, numpy)
and write a ready file (launch), then are sent SIGTERM and reaped (stop). The ratio is ours / floor.
"""

from __future__ import annotations

import argparse
import io
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import markdown_table, update_section

from zrl.config import ExperimentConfig, WorkerGroupConfig
from zrl.controller.plan import RunPaths, name_resolve_url
from zrl.controller.runner import Controller
from zrl.controller.schedulers import make_scheduler
from zrl.controller.validate import complete, validate
from zrl.nameresolve import make_name_resolver
from zrl.workers.echo import EchoServerConfig

FLOOR_CHILD = ("import sys, time, zmq, msgpack, numpy; open(sys.argv[1], 'w').close(); time.sleep(600)")


def measure_zrl(workers: int, root: Path, rep: int) -> tuple[float, float]:
    config = complete(ExperimentConfig(
        experiment="bench", trial=f"n{workers}-r{rep}", run_root=str(root), progress_interval_s=0,
        workers={"light": WorkerGroupConfig(type="echo_server", count=workers, config=EchoServerConfig())}))
    validate(config)
    paths = RunPaths.for_config(config)
    paths.root.mkdir(parents=True, exist_ok=True)
    resolver = make_name_resolver(name_resolve_url(config, paths))
    controller = Controller(config, make_scheduler("local", paths.root), resolver, out=io.StringIO())
    try:
        controller.start()
        running = controller.timeline["running"]
    finally:
        controller.stop(0)
        resolver.close()
    return running, controller.timeline["stopped"]


def measure_floor(workers: int, root: Path, rep: int) -> tuple[float, float]:
    ready = [root / f"floor-{workers}-{rep}-{i}" for i in range(workers)]
    started = time.monotonic()
    # A session of its own, as the local scheduler gives each worker (the kernel's autogroup CPU share differs).
    procs = [subprocess.Popen([sys.executable, "-c", FLOOR_CHILD, str(path)], start_new_session=True)
             for path in ready]
    try:
        while not all(path.exists() for path in ready):
            time.sleep(0.005)
        launch = time.monotonic() - started
    finally:
        stop_started = time.monotonic()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait()
    return launch, time.monotonic() - stop_started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 16, 32], help="worker counts to measure")
    parser.add_argument("--repeats", type=int, default=3, help="runs per size; the median is reported")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        measure_floor(2, root, -1)  # warm the interpreter and page caches before anything is timed
        measure_zrl(2, root, -1)
        for workers in args.sizes:
            ours, floor = [], []
            for rep in range(args.repeats):
                floor.append(measure_floor(workers, root, rep))
                ours.append(measure_zrl(workers, root, rep))
            up, down = (statistics.median(x[i] for x in ours) for i in (0, 1))
            floor_up, floor_down = (statistics.median(x[i] for x in floor) for i in (0, 1))
            rows.append([workers, f"{up:.2f}", f"{floor_up:.2f}", f"{up / floor_up:.2f}",
                         f"{down:.2f}", f"{floor_down:.2f}", f"{down / floor_down:.2f}"])
            print(rows[-1], flush=True)
    headers = ["workers", "launch -> all RUNNING (s)", "floor: processes ready (s)", "ratio",
               "stop -> all exited (s)", "floor: SIGTERM + reap (s)", "ratio"]
    table = markdown_table(headers, rows)
    print(table)
    body = (f"{table}\n\nMedian of {args.repeats} runs. Workers are echo servers (idle inference servers) launched "
            "as subprocesses by the local scheduler, on the file name service. 'all RUNNING' includes process "
            "start, registration, configure and start replies; the floor is bare Python processes importing the "
            "same libraries. 'stop' is exit over the control channel, the wait for the processes, and clearing "
            "the trial's names; its floor is SIGTERM and reaping the bare processes.")
    update_section("controller", "Controller: launch to all RUNNING, stop to all exited",
                   "python benchmarks/controller.py", body)


if __name__ == "__main__":
    main()
