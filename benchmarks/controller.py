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

REPO = Path(__file__).resolve().parent.parent
TREEPO = REPO / "experiments" / "treepo_math.py"
FLOOR_CHILD = ("import sys, time, zmq, msgpack, numpy; open(sys.argv[1], 'w').close(); time.sleep(600)")


def measure_zrl(workers: int, root: Path, rep: int) -> tuple[float, float]:
    config = complete(ExperimentConfig(
        experiment="bench", trial=f"n{workers}-r{rep}", run_root=str(root), progress_interval_s=0,
        workers={"light": WorkerGroupConfig(type="echo_server", count=workers, config=EchoServerConfig())}))
    validate(config)
    return start_and_stop(config)


def start_and_stop(config: ExperimentConfig) -> tuple[float, float]:
    """Seconds from launch to all workers RUNNING, and from stop to all exited, on the config's scheduler."""
    paths = RunPaths.for_config(config)
    paths.create()
    resolver = make_name_resolver(name_resolve_url(config, paths))
    controller = Controller(config, make_scheduler(config.scheduler, paths.root, config.slurm, config.ray), resolver,
                            out=io.StringIO())
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


def measure_treepo(scheduler: str, root: Path, rep: int, overrides: list[str]) -> tuple[float, float]:
    """Launch -> all RUNNING and stop -> all exited for the TreePO experiment on `scheduler`."""
    from zrl.controller.__main__ import placement_refusal, resolve_config

    config = resolve_config(str(TREEPO), [f"trial={scheduler}-r{rep}", f"run_root={root}", "progress_interval_s=0",
                                          f"scheduler={scheduler}", *overrides])
    refusal = placement_refusal(config)
    if refusal is not None:
        raise SystemExit(refusal)
    return start_and_stop(config)


def slurm_answers() -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def measure_schedulers(root: Path, repeats: int) -> str:
    """The TreePO experiment on local, slurm and ray: medians, and each against local."""
    sys.path.insert(0, str(REPO / "tests"))
    from ray_cluster import start_head

    results: dict[str, tuple[float, float]] = {}
    notes = []
    ray = start_head()
    try:
        schedulers = {"local": [], "ray": [f"ray.address={ray.address}", "ray.poll_interval_s=0.2"]}
        if slurm_answers():
            schedulers["slurm"] = ["slurm.poll_interval_s=0.2"]
        else:
            notes.append("slurm: not measured, no Slurm cluster answers (`bash scripts/slurm-dev-cluster.sh up` as "
                         "root, then export the SLURM_CONF it prints)")
        measure_treepo("local", root, -1, [])  # warm the page cache with the model and libraries
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in schedulers}
        for rep in range(repeats):
            for name, overrides in schedulers.items():
                runs[name].append(measure_treepo(name, root, rep, overrides))
                print(name, runs[name][-1], flush=True)
        for name, measured in runs.items():
            results[name] = (statistics.median(m[0] for m in measured), statistics.median(m[1] for m in measured))
    finally:
        ray.stop()
    local_up, local_down = results["local"]
    rows = [[name, f"{up:.2f}", f"{up / local_up:.2f}x", f"{down:.2f}", f"{down / local_down:.2f}x"]
            for name, (up, down) in results.items()]
    table = markdown_table(["scheduler", "launch -> all RUNNING (s)", "vs local", "stop -> all exited (s)",
                            "vs local"], rows)
    return (f"{table}\n\nThe TreePO experiment (`experiments/treepo_math.py`: policy, trainer, evaluator and rollout "
            f"worker; 'all RUNNING' includes loading the model in each), median of {repeats} runs per scheduler in "
            "alternating order. Ray: a one-node cluster on this machine (`ray start --head`, 8 logical CPUs), each "
            "worker a process of its own actor. Slurm: a one-node cluster on this machine, each group one job."
            + "".join(f"\n\n{note}" for note in notes) + "\n\nTarget: ray within 2x of local.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 16, 32], help="worker counts to measure")
    parser.add_argument("--repeats", type=int, default=3, help="runs per size; the median is reported")
    parser.add_argument("--skip-schedulers", action="store_true", help="leave out the TreePO runs per scheduler")
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
    if not args.skip_schedulers:
        with tempfile.TemporaryDirectory() as tmp:
            schedulers = measure_schedulers(Path(tmp), args.repeats)
        print(schedulers)
        update_section("controller_schedulers", "Controller: the TreePO experiment on local, Slurm and Ray",
                       "make bench-controller", schedulers)


if __name__ == "__main__":
    main()
