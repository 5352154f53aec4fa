"""Failover in the TreePO experiment, end to end through `python -m zrl.controller experiments/treepo_math.py`:
a policy worker SIGKILLed mid-run (given up, or relaunched), a rollout worker SIGKILLed and relaunched, and a
trainer that hangs inside a training step. The runs are short (a tiny tree, few steps); every kill waits until
the trainer has stepped, and the sample accounting must balance across the workers' processes."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
from test_treepo_e2e import RUN_TIMEOUT_S, TreepoRun

from zrl.nameresolve import make_name_resolver, names
from zrl.streams import InferenceStreamConfig
from zrl.streams.control import ControlClient
from zrl.streams.control_key_file import control_key_path, read_control_key
from zrl.streams.curve import CurveKeys
from zrl.workers.drills import DRILL_ENV

pytestmark = pytest.mark.slow

PROMPTS_PER_STEP = 2
# 2 trees of 4 trajectories per step, an evaluation every 4 versions on 10 held-out problems.
TINY = ("eval_every=4", f"prompts_per_step={PROMPTS_PER_STEP}", "tree.width=4", "heldout.count=10")
HOLD_S = 1.5
ON_THIS_NODE = f" on node {socket.gethostname()} (127.0.0.1)"
"""Where the controller says a failed worker ran (the local scheduler: this host, the default worker_host)."""
"""How long the policy worker to be killed is stopped first, so that the rollout worker's requests wait on it."""
STALL_S = 8.0
"""timeouts.poll_stall_s of the hang test: above any legitimate poll of this tiny run, even on a loaded machine."""


def wait_for_step(run: TreepoRun, step: int, timeout: float = RUN_TIMEOUT_S) -> int:
    """Wait until the trainer has written the metrics of `step`; returns the newest step written."""
    deadline = time.monotonic() + timeout
    metrics = run.run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        assert run.process.poll() is None, f"the run ended before step {step}:\n{run.output}\n{run.log_tails()}"
        steps = [r["step"] for r in run.records("train")] if metrics.exists() else []
        if steps and max(steps) >= step:
            return max(steps)
        time.sleep(0.2)
    raise AssertionError(f"no step {step} within {timeout} s:\n{run.output}\n{run.log_tails()}")


def wait_for(condition, what: str, run: TreepoRun, timeout: float = RUN_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s:\n{run.output}"
        assert run.process.poll() is None, f"the run ended before {what}:\n{run.output}\n{run.log_tails()}"
        time.sleep(0.2)


def log_of(run: TreepoRun, worker: str) -> str:
    return (run.run_dir / "logs" / f"{worker.replace('/', '-')}.log").read_text(errors="replace")


def command(run: TreepoRun, worker: str, verb: str) -> None:
    """Send `verb` (pause, resume) to `worker` as an operator holding the trial's key would."""
    resolver = make_name_resolver(f"file://{run.run_dir / 'names'}")
    key = read_control_key(control_key_path(run.run_dir))
    client = ControlClient(run.trial, sender="operator", key=key, curve=CurveKeys.derive(key))
    try:
        client.connect(worker, resolver.get(names.worker_control("treepo_math", run.trial, worker)))
        reply = client.request(worker, verb, timeout=10)[worker]
        assert reply.ok, (verb, reply.error)
    finally:
        client.close()
        resolver.close()


def starts(run: TreepoRun, worker: str) -> int:
    """How many processes of `worker` have started (its log is appended to on relaunch)."""
    return len(re.findall(rf"zrl\.worker\.{re.escape(worker)}: started$", log_of(run, worker), re.MULTILINE))


def check_accounting(summary: dict) -> dict:
    """The sample accounting of a finished run balances, term by term; returns it."""
    accounting = summary["sample_accounting"]
    assert accounting["balanced"] is True, accounting
    lost = accounting["lost"]
    assert accounting["produced"] == (accounting["trained"] + accounting["dropped_stale"]
                                      + accounting["dropped_dynamic"] + lost + accounting["in_flight_at_stop"])
    assert 0 < accounting["received"] <= accounting["produced"] and accounting["in_flight_at_stop"] >= 0, accounting
    trainer = summary["workers"]["trainer/0"]["last"]["stats"]["accounting"]
    assert accounting["received"] == trainer["received"] and accounting["trained"] == trainer["trained"]
    return accounting


def check_completed(run: TreepoRun, steps: int) -> dict:
    code = run.wait()
    assert code == 0, f"exit code {code}; output:\n{run.output}\n{run.log_tails()}"
    assert [r["step"] for r in run.records("train")] == list(range(1, steps + 1))
    assert run.worker_pids(timeout=30) == {}
    return run.summary()


@pytest.mark.timeout(RUN_TIMEOUT_S + 180)
@pytest.mark.parametrize("restart", ["given_up", "relaunched"])
def test_a_policy_worker_killed_mid_run_leaves_the_run_to_the_other(tmp_path: Path, restart: str) -> None:
    steps = 20
    policy_options = (("workers.policy.max_failed=1",) if restart == "given_up" else
                      ("workers.policy.restart=on_failure", "workers.policy.max_restarts=1"))
    run = TreepoRun(tmp_path, f"total_steps={steps}", *TINY, "workers.policy.count=2", *policy_options)
    wait_for_step(run, 2)
    pid = run.worker_pids()["policy/1"]
    os.kill(pid, signal.SIGSTOP)  # the rollout worker's next requests to it go unanswered
    time.sleep(HOLD_S)
    os.kill(pid, signal.SIGKILL)
    killed = "worker policy/1 failed (its process ended (FAILED: killed by signal 9 (SIGKILL)))"
    wait_for(lambda: killed in run.output, "the controller's report of the kill", run, timeout=30)
    served_at_restart = None
    if restart == "relaunched":
        # Hold the trainer until the relaunched worker serves, so the run cannot end before it answers.
        command(run, "trainer/0", "pause")
        wait_for(lambda: starts(run, "policy/1") == 2, "the relaunch of policy/1", run)
        # The rollout worker finds a new server within resolve_interval_s (1 s); a run that ended sooner would
        # leave the relaunched worker nothing to answer.
        time.sleep(2 * InferenceStreamConfig().resolve_interval_s + 0.5)
        served_at_restart = max(r["step"] for r in run.records("train"))
        command(run, "trainer/0", "resume")
    summary = check_completed(run, steps)
    output = run.output
    workers = summary["workers"]
    if restart == "given_up":
        assert f"{killed}{ON_THIS_NODE}; the experiment goes on without it (1 of workers.policy.max_failed=1 failed)" in output
        assert (workers["policy/1"]["status"], workers["policy/1"]["restarts"]) == ("FAILED", 0)
    else:
        assert f"{killed}{ON_THIS_NODE}; restarting it (1/1)" in output
        relaunched = workers["policy/1"]
        assert relaunched["restarts"] == 1 and len(relaunched["ended_processes"]) == 1
        stats = relaunched["last"]["stats"]
        # It loaded the trainer's newest version before it registered: its first answers carry that version.
        assert stats["requests"] > 0 and stats["first_version_served"] >= served_at_restart > 0, stats
        assert "serving version" in log_of(run, "policy/1").split("registered control address")[-1]
    assert workers["policy/0"]["last"]["stats"]["requests"] > 0
    # The requests the killed worker held were sent again to the other one, and every request was answered.
    inference = workers["rollout/0"]["last"]["stats"]["inference"]
    assert inference["resent"] > 0 and inference.get("cancelled", 0) == 0, inference
    assert "re-sending" in log_of(run, "rollout/0")
    accounting = check_accounting(summary)
    assert accounting["lost"] == 0, accounting  # a policy worker holds no samples


def trained_trees(run: TreepoRun) -> dict[str, Counter[str]]:
    """How often each tree (problem@epoch) was trained on, by the rollout process that produced it, from the
    metrics of every step."""
    trees: dict[str, Counter[str]] = {}
    for record in run.records("train"):
        assert sum(map(len, record["trees"].values())) == PROMPTS_PER_STEP, record["trees"]
        for incarnation, uids in record["trees"].items():
            trees.setdefault(incarnation, Counter()).update(uids)
    return trees


@pytest.mark.timeout(RUN_TIMEOUT_S + 120)
def test_a_rollout_worker_killed_mid_run_is_relaunched_and_the_accounting_balances(tmp_path: Path) -> None:
    # The trees posted before the kill feed at most max_staleness + 1 = 3 more steps: the relaunched process must
    # produce the trees of the last ones.
    steps = 12
    run = TreepoRun(tmp_path, f"total_steps={steps}", *TINY, "workers.rollout.restart=on_failure",
                    "workers.rollout.max_restarts=1", "workers.rollout.restart_backoff_s=0")
    wait_for_step(run, 2)
    os.kill(run.worker_pids()["rollout/0"], signal.SIGKILL)
    summary = check_completed(run, steps)
    assert ("worker rollout/0 failed (its process ended (FAILED: killed by signal 9 (SIGKILL)))"
            f"{ON_THIS_NODE}; restarting it (1/1)") in run.output
    rollout = summary["workers"]["rollout/0"]
    assert rollout["restarts"] == 1 and len(rollout["ended_processes"]) == 1, rollout
    before = rollout["ended_processes"][0]["stats"]["accounting"]
    after = rollout["last"]["stats"]["accounting"]
    received_from = summary["workers"]["trainer/0"]["last"]["stats"]["accounting"]["received_from"]
    assert set(received_from) <= {before["incarnation"], after["incarnation"]}, received_from
    # The killed process's counters still count; what it produced and never delivered was lost with it. Its last
    # status reply may predate its last posts (even its first), so what reached the trainer from it counts too.
    produced_before = max(before["produced"], received_from.get(before["incarnation"], 0))
    assert before["incarnation"] != after["incarnation"] and produced_before > 0 and after["produced"] > 0, \
        (before, after, received_from)
    accounting = check_accounting(summary)
    assert accounting["produced"] == produced_before + after["produced"], (accounting, before, after)
    lost = accounting["lost"]
    assert lost == produced_before - received_from.get(before["incarnation"], 0) and 0 <= lost <= produced_before
    if lost:
        assert f"+ lost with stopped workers {lost} + in flight at stop" in run.output
    else:
        assert "lost with stopped workers" not in run.output
    trees = trained_trees(run)
    assert set(trees) <= {before["incarnation"], after["incarnation"]} and after["incarnation"] in trees, trees
    assert sum(sum(counts.values()) for counts in trees.values()) == steps * PROMPTS_PER_STEP
    # The relaunched process continued the shard where the killed one stood: no tree was trained twice (the trees the
    # killed process had in flight are started again by no one).
    trained = Counter(uid for counts in trees.values() for uid in counts.elements())
    assert max(trained.values()) == 1, trees


@pytest.mark.timeout(RUN_TIMEOUT_S + 120)
def test_a_hung_trainer_is_reported_with_its_stack_and_the_run_stops(tmp_path: Path) -> None:
    run = TreepoRun(tmp_path, "total_steps=8", *TINY, f"timeouts.poll_stall_s={STALL_S:g}", "timeouts.stop_s=5",
                    env={**os.environ, DRILL_ENV: "trainer/0:hang@2"})  # hangs in the poll after step 2
    reported = "error: worker trainer/0 failed: LOST: its _poll has not returned for"
    wait_for(lambda: reported in run.output, "the report of the hung trainer", run)
    reported_at = time.time()
    code = run.wait(timeout=60)
    output = run.output
    assert code == 1, f"exit code {code}; output:\n{output}"
    log = log_of(run, "trainer/0")
    drill = re.search(r"^(\S+ \S+) WARNING .* drill: hang after 2 batches \(ZRL_DRILL\): deadlocking inside this "
                      r"poll", log, re.MULTILINE)
    assert drill, log
    hung_at = datetime.strptime(drill.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    # Reported once its poll had hung for poll_stall_s, give or take the status interval and a loaded machine.
    assert STALL_S - 1 <= reported_at - hung_at <= STALL_S + 10, (hung_at, reported_at)
    assert re.search(rf"{re.escape(reported)} (\d+\.\d) s \(timeouts.poll_stall_s={STALL_S:g}\)", output), output
    assert [r["step"] for r in run.records("train")] == [1, 2]
    # The stacks of its threads, written into its log before it was stopped, show where it hangs; the controller
    # prints the end of that log, where the main thread's stack comes last.
    hang = re.compile(r"in deadlock_in_native_code\n.* in run_if_due\n.* in _poll_once\n")
    assert hang.search(log), log
    assert hang.search(output.split(reported)[1]), output
    summary = run.summary()
    assert summary["exit_code"] == 1 and summary["workers"]["trainer/0"]["status"] == "LOST"
    assert run.worker_pids(timeout=30) == {}
