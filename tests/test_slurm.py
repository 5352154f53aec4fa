"""SlurmScheduler against a real single-node Slurm cluster (started by scripts/slurm-dev-cluster.sh when needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import require

from zrl.controller.schedulers import (
    JobState,
    Resources,
    SlurmError,
    SlurmOptions,
    SlurmPlacement,
    SlurmScheduler,
    WorkerJobStatus,
    WorkerLaunch,
)
from zrl.controller.schedulers.slurm import map_slurm_state
from zrl.controller.submit import check_worker_host, loopback_refusal, partition_nodes, submit_controller

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parent.parent
CLUSTER_SCRIPT = REPO / "scripts" / "slurm-dev-cluster.sh"


def _sinfo_answers() -> bool:
    if shutil.which("sinfo") is None or not os.environ.get("SLURM_CONF"):
        return False
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0 and result.stdout.strip() != ""


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[str]:
    """SLURM_CONF of a live cluster: the one already configured, or a fresh single-node one stopped at the end."""
    if _sinfo_answers():
        yield os.environ["SLURM_CONF"]
        return
    require(shutil.which("slurmctld") is not None and shutil.which("sbatch") is not None,
            "Slurm is not installed (scripts/setup-env.sh installs slurmctld, slurmd, slurm-client and munge as root)")
    require(os.geteuid() == 0, "starting the single-node Slurm test cluster needs root")
    root = os.environ.get("ZRL_SLURM_ROOT") or "/run/zrl-slurm"
    already_up = subprocess.run(["bash", str(CLUSTER_SCRIPT), "status", root], capture_output=True,
                                timeout=30).returncode == 0
    if not already_up:
        result = subprocess.run(["bash", str(CLUSTER_SCRIPT), "up", root], capture_output=True, text=True, timeout=300)
        require(result.returncode == 0, f"slurm-dev-cluster.sh up failed: {result.stderr[-2000:]}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = f"{root}/etc/slurm.conf"
    try:
        require(_sinfo_answers(), f"the Slurm cluster under {root} does not answer sinfo")
        yield os.environ["SLURM_CONF"]
    finally:
        if not already_up:
            subprocess.run(["bash", str(CLUSTER_SCRIPT), "down", root], capture_output=True, timeout=120)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


def python_worker(run_dir: Path, group: str, index: int, code: str, env: dict[str, str] | None = None) -> WorkerLaunch:
    return WorkerLaunch(group=group, index=index, argv=(sys.executable, "-u", "-c", code), env=env or {},
                        log_path=run_dir / "logs" / f"{group}-{index}.log", resources=Resources(cpus=1, memory_mb=256))


def wait_for(scheduler: SlurmScheduler, predicate: Callable[[dict[str, WorkerJobStatus]], bool],
             timeout: float = 30.0) -> dict[str, WorkerJobStatus]:
    deadline = time.monotonic() + timeout
    while True:
        states = scheduler.poll()
        if predicate(states):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s; last states: {states}")
        time.sleep(0.2)


def squeue_active(job_ids: list[str]) -> str:
    """Jobs among `job_ids` that squeue lists without `-t all` (pending, running, completing)."""
    result = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T"], capture_output=True,
                            text=True, timeout=30)
    return result.stdout.strip()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs" / "slurmtest" / "t1"


@pytest.fixture
def scheduler(slurm_cluster: str, run_dir: Path) -> Iterator[SlurmScheduler]:
    sched = SlurmScheduler(SlurmOptions(poll_interval_s=0.1), run_dir)
    try:
        yield sched
    finally:
        sched.stop(timeout=10)


def test_group_runs_to_completion_with_logs_env_and_job_name(scheduler: SlurmScheduler, run_dir: Path) -> None:
    out = run_dir / "out"
    code = ("import os, pathlib; i = os.environ['ZRL_TEST_INDEX']; print('hello from', i); "
            f"pathlib.Path({str(out)!r}, i).write_text(os.environ['ZRL_TEST_VALUE'])")
    out.mkdir(parents=True)
    launches = [python_worker(run_dir, "echo", i, code, {"ZRL_TEST_INDEX": str(i), "ZRL_TEST_VALUE": f"a,b c'{i}"})
                for i in range(3)]
    scheduler.submit(launches)
    states = wait_for(scheduler, lambda s: all(status.state.finished for status in s.values()))
    assert {wid: status.state for wid, status in states.items()} == {f"echo/{i}": JobState.COMPLETED for i in range(3)}
    assert all(status.exit_code == 0 for status in states.values())
    for i in range(3):
        assert (out / str(i)).read_text() == f"a,b c'{i}"
        assert f"hello from {i}" in (run_dir / "logs" / f"echo-{i}.log").read_text()
    job_ids = set(scheduler.job_ids().values())
    assert len(job_ids) == 1
    listed = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_ids.pop(), "-o", "%j|%T|%D|%C"],
                            capture_output=True, text=True, timeout=30).stdout.strip()
    assert listed.split("|")[:2] == ["zrl-slurmtest-t1-echo", "COMPLETED"]
    assert (run_dir / "slurm" / "zrl-slurmtest-t1-echo.sbatch").stat().st_mode & 0o777 == 0o600


def test_failing_worker_is_reported_then_relaunched_as_its_own_job(scheduler: SlurmScheduler, run_dir: Path) -> None:
    failing = python_worker(run_dir, "mixed", 0, "import sys; print('boom-marker-42', file=sys.stderr); sys.exit(3)")
    sleeper = python_worker(run_dir, "mixed", 1, "import time; print('sleeping'); time.sleep(120)")
    scheduler.submit([failing, sleeper])
    states = wait_for(scheduler, lambda s: s["mixed/0"].state.finished and s["mixed/1"].state is JobState.RUNNING)
    assert states["mixed/0"].state is JobState.FAILED
    assert states["mixed/0"].exit_code == 3
    assert str(run_dir / "logs" / "mixed-0.log") in states["mixed/0"].detail
    assert "boom-marker-42" in (run_dir / "logs" / "mixed-0.log").read_text()
    group_job = scheduler.job_ids()["mixed/1"]

    scheduler.submit([python_worker(run_dir, "mixed", 0, "print('second life')")])
    relaunch_job = scheduler.job_ids()["mixed/0"]
    assert relaunch_job != group_job
    states = wait_for(scheduler, lambda s: s["mixed/0"].state.finished)
    assert states["mixed/0"].state is JobState.COMPLETED
    assert states["mixed/1"].state is JobState.RUNNING
    log_text = (run_dir / "logs" / "mixed-0.log").read_text()
    assert "boom-marker-42" in log_text and "second life" in log_text
    name = subprocess.run(["squeue", "-h", "-t", "all", "-j", relaunch_job, "-o", "%j"], capture_output=True,
                          text=True, timeout=30).stdout.strip()
    assert name == "zrl-slurmtest-t1-mixed-0"

    scheduler.stop(timeout=10)
    assert squeue_active([group_job, relaunch_job]) == ""
    states = scheduler.poll()
    assert states["mixed/1"].state is JobState.CANCELLED
    assert states["mixed/0"].state is JobState.COMPLETED


def test_stop_cancels_one_step_then_whole_jobs(scheduler: SlurmScheduler, run_dir: Path) -> None:
    scheduler.submit([python_worker(run_dir, "sleepers", i, "import time; time.sleep(120)") for i in range(2)])
    wait_for(scheduler, lambda s: all(s[f"sleepers/{i}"].state is JobState.RUNNING for i in range(2)))
    scheduler.stop(["sleepers/0"], timeout=10)
    states = scheduler.poll()
    assert states["sleepers/0"].state is JobState.CANCELLED
    assert states["sleepers/1"].state is JobState.RUNNING
    scheduler.submit([python_worker(run_dir, "sleepers", 0, "print('replacement')")])
    assert wait_for(scheduler, lambda s: s["sleepers/0"].state.finished)["sleepers/0"].state is JobState.COMPLETED

    job_ids = sorted(set(scheduler.job_ids().values()))
    assert len(squeue_active(job_ids).splitlines()) == 1
    started = time.monotonic()
    scheduler.stop(timeout=10)
    assert time.monotonic() - started < 10
    assert squeue_active(job_ids) == ""
    assert scheduler.poll()["sleepers/1"].state is JobState.CANCELLED


def test_stop_without_grace_kills_a_step_then_a_job_that_ignore_sigterm(scheduler: SlurmScheduler,
                                                                        run_dir: Path) -> None:
    # What the controller does to a LOST (hung) worker: no grace period, and no error while Slurm still
    # shows the job it is killing as RUNNING or COMPLETING.
    code = ("import faulthandler, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "faulthandler.register(signal.SIGUSR1, all_threads=True); print('up', flush=True); time.sleep(120)")
    scheduler.submit([python_worker(run_dir, "hung", i, code) for i in range(2)])
    logs = [run_dir / "logs" / f"hung-{i}.log" for i in range(2)]
    deadline = time.monotonic() + 30
    while not all(log.exists() and "up" in log.read_text() for log in logs) and time.monotonic() < deadline:
        time.sleep(0.1)
    scheduler.dump_stacks(["hung/1"])  # what the controller asks of a stalled worker before it is stopped
    while "most recent call first" not in logs[1].read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "most recent call first" in logs[1].read_text()
    started = time.monotonic()
    scheduler.stop(["hung/0"], timeout=0)
    states = scheduler.poll()
    assert states["hung/0"].state.finished and states["hung/1"].state is JobState.RUNNING
    scheduler.stop(timeout=0)
    assert time.monotonic() - started < 30
    assert squeue_active(sorted(set(scheduler.job_ids().values()))) == ""


def test_stopping_a_worker_of_a_pending_job_keeps_it_from_starting(slurm_cluster: str, run_dir: Path) -> None:
    held = SlurmScheduler(SlurmOptions(poll_interval_s=0.1, extra_sbatch_lines=("#SBATCH --hold",)), run_dir)
    try:
        held.submit([python_worker(run_dir, "held", i, f"print('ran {i}')") for i in range(2)])
        assert "Held" in wait_for(held, lambda s: s["held/0"].state is JobState.PENDING)["held/0"].detail
        held.stop(["held/0"], timeout=10)
        job_id = held.job_ids()["held/0"]
        subprocess.run(["scontrol", "release", job_id], check=True, timeout=30)
        states = wait_for(held, lambda s: all(status.state.finished for status in s.values()))
        assert states["held/0"].state is JobState.CANCELLED
        assert states["held/1"].state is JobState.COMPLETED
        assert not (run_dir / "logs" / "held-0.log").exists()
        assert (run_dir / "logs" / "held-1.log").read_text().strip() == "ran 1"
    finally:
        held.stop(timeout=10)


def test_describe_renders_resources_and_options_without_submitting(tmp_path: Path) -> None:
    options = SlurmOptions(partition="gpu", time_limit="04:00:00", account="rl", extra_sbatch_lines=("#SBATCH --qos=high",),
                           container_image="nvcr.io#nvidia/pytorch:24.05-py3", container_mounts="/data:/data")
    run_dir = tmp_path / "runs" / "exp" / "trial7"
    sched = SlurmScheduler(options, run_dir)
    launches = [WorkerLaunch("policy", i, ("python", "-m", "zrl.workers", "policy", "--index", str(i)),
                             {"ZRL_NAME_RESOLVE": "redis://:s3cret@head:6379/0", "ZRL_INDEX": str(i)},
                             run_dir / "logs" / f"policy-{i}.log", Resources(cpus=4, memory_mb=10000, gpus=1))
                for i in range(2)]
    text = sched.describe(launches)
    for expected in ("#SBATCH --job-name=zrl-exp-trial7-policy", "#SBATCH --ntasks=2", "#SBATCH --cpus-per-task=4",
                     "#SBATCH --mem-per-cpu=2500M", "#SBATCH --gpus-per-task=1", "#SBATCH --partition=gpu",
                     "#SBATCH --time=04:00:00", "#SBATCH --account=rl", "#SBATCH --qos=high",
                     "--container-image=nvcr.io#nvidia/pytorch:24.05-py3", "--container-mounts=/data:/data",
                     f"--output={run_dir / 'logs' / 'policy-1.log'}", "ZRL_NAME_RESOLVE=redis://***@head:6379/0",
                     "--job-name=policy.0", "--job-name=policy.1"):
        assert expected in text, expected
    assert "s3cret" not in text
    # Every #SBATCH line comes before the first command, or sbatch would ignore it.
    lines = text.splitlines()
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert all(not line.startswith("#SBATCH") for line in lines[first_command:])
    script = tmp_path / "check.sh"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert not (run_dir / "slurm").exists()
    both = sched.describe([*launches, WorkerLaunch("trainer", 0, ("python", "-m", "zrl.workers", "trainer"))])
    assert both.count("#!/bin/bash") == 2 and "#SBATCH --job-name=zrl-exp-trial7-trainer" in both


def test_a_group_placement_goes_into_that_group_script_only(tmp_path: Path) -> None:
    sched = SlurmScheduler(SlurmOptions(extra_sbatch_lines=("#SBATCH --qos=high",)), tmp_path / "runs" / "e" / "t")
    placement = SlurmPlacement(nodelist="gpu[01-02]", exclude="gpu07", constraint="a100&ib", gres="gpu:4",
                               exclusive=True, ntasks_per_node=1, extra_sbatch_lines=("#SBATCH --reservation=rl",))
    policy = [WorkerLaunch("policy", i, ("python", "policy"), slurm=placement) for i in range(2)]
    scripts = sched.describe([*policy, WorkerLaunch("trainer", 0, ("python", "trainer"))]).split("#!/bin/bash")[1:]
    placed = ["#SBATCH --nodelist=gpu[01-02]", "#SBATCH --exclude=gpu07", "#SBATCH --constraint=a100&ib",
              "#SBATCH --gres=gpu:4", "#SBATCH --exclusive", "#SBATCH --ntasks-per-node=1",
              "#SBATCH --reservation=rl"]
    policy_script = next(text for text in scripts if "-policy\n" in text)
    trainer_script = next(text for text in scripts if "-trainer\n" in text)
    lines = policy_script.splitlines()
    assert all(line in lines for line in placed), policy_script
    assert lines.index("#SBATCH --qos=high") < lines.index("#SBATCH --reservation=rl")  # the group's lines come last
    assert "#SBATCH --qos=high" in trainer_script and not any(line in trainer_script for line in placed)
    with pytest.raises(ValueError, match="different slurm placements"):
        sched.describe([policy[0], WorkerLaunch("policy", 1, ("python", "policy"))])
    with pytest.raises(ValueError, match="worker a/0: slurm placement: nodelist: 'n1 n2' may not contain whitespace; "
                                         "ntasks_per_node: must be >= 0"):
        sched.describe([WorkerLaunch("a", 0, ("true",), slurm=SlurmPlacement(nodelist="n1 n2", ntasks_per_node=-2))])


def test_bad_launches_and_options_name_the_problem(tmp_path: Path) -> None:
    sched = SlurmScheduler(SlurmOptions(), tmp_path / "runs" / "e" / "t")
    a = WorkerLaunch("a", 0, ("true",))
    with pytest.raises(ValueError, match="worker a/0 appears twice"):
        sched.submit([a, WorkerLaunch("b", 0, ("true",)), a])
    with pytest.raises(ValueError, match="no workers to launch"):
        sched.describe([])
    with pytest.raises(ValueError, match="worker a/1: argv is empty"):
        sched.describe([WorkerLaunch("a", 1, ())])
    with pytest.raises(ValueError, match="worker a/0: env name 'BAD-NAME'"):
        sched.describe([WorkerLaunch("a", 0, ("true",), {"BAD-NAME": "x"})])
    with pytest.raises(ValueError, match="container_mounts"):
        SlurmScheduler(SlurmOptions(container_mounts="/a:/a"), tmp_path)
    with pytest.raises(ValueError, match="partition"):
        SlurmScheduler(SlurmOptions(partition="a b"), tmp_path)


def test_missing_sbatch_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    sched = SlurmScheduler(SlurmOptions(), tmp_path / "runs" / "e" / "t")
    with pytest.raises(SlurmError, match=r"'sbatch' is not on PATH.*apt-get install slurm-client"):
        sched.submit([WorkerLaunch("a", 0, ("true",), log_path=tmp_path / "a.log")])


@pytest.mark.parametrize(("slurm", "expected"), [
    ("PENDING", JobState.PENDING), ("CONFIGURING", JobState.PENDING), ("RUNNING", JobState.RUNNING),
    ("COMPLETING", JobState.RUNNING), ("COMPLETED", JobState.COMPLETED), ("FAILED", JobState.FAILED),
    ("CANCELLED by 0", JobState.CANCELLED), ("TIMEOUT", JobState.TIMEOUT), ("NODE_FAIL", JobState.NODE_FAIL),
    ("OUT_OF_MEMORY", JobState.OUT_OF_MEMORY), ("PREEMPTED", JobState.CANCELLED), ("BOOT_FAIL", JobState.FAILED),
    ("SUSPENDED", JobState.SUSPENDED), ("STOPPED", JobState.SUSPENDED), ("", JobState.UNKNOWN),
    ("SOMETHING_NEW", JobState.UNKNOWN),
])
def test_slurm_states_map_to_job_states(slurm: str, expected: JobState) -> None:
    assert map_slurm_state(slurm) is expected


def test_submit_controller_runs_the_command_in_a_job_with_its_log_in_the_run_dir(slurm_cluster: str,
                                                                                   run_dir: Path) -> None:
    job_id, log_path = submit_controller([sys.executable, "-c", "import os; print('controller in', os.environ['SLURM_JOB_ID'])"],
                                         SlurmOptions(), run_dir)
    assert log_path == run_dir.resolve() / f"controller-{job_id}.log"
    deadline = time.monotonic() + 30
    while squeue_active([job_id]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert squeue_active([job_id]) == ""
    assert log_path.read_text().strip() == f"controller in {job_id}"
    name = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%j|%T"], capture_output=True, text=True,
                          timeout=30).stdout.strip()
    assert name == "zrl-slurmtest-t1-controller|COMPLETED"


def test_a_loopback_worker_host_is_refused_on_a_partition_of_several_nodes(slurm_cluster: str) -> None:
    assert partition_nodes("") == ["localhost"]  # the test cluster's default partition has one node
    check_worker_host("127.0.0.1", SlurmOptions())  # one node: loopback works
    refusal = loopback_refusal("127.0.0.1", "gpu", ["n1", "n2"])
    assert refusal is not None and "worker_host=127.0.0.1 is a loopback address, but Slurm partition gpu has 2 nodes" \
        in refusal and "worker_host=auto" in refusal
    assert loopback_refusal("localhost", "", ["n1", "n2"]) is not None
    assert loopback_refusal("10.1.2.3", "gpu", ["n1", "n2"]) is None
