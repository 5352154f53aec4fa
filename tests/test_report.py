"""The end-of-run report: sample accounting, the training table, the learning curve and the progress headline."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from types import SimpleNamespace

from zrl.controller.progress import Progress, headline_text
from zrl.controller.report import (
    accounting_text,
    plot_learning_curve,
    read_metrics,
    sample_accounting,
    training_table,
)


def reply(accounting: dict | None = None, headline: dict | None = None) -> dict:
    stats = {}
    if accounting is not None:
        stats["accounting"] = accounting
    if headline is not None:
        stats["headline"] = headline
    return {"stats": stats}


def current(replies: dict) -> dict:
    """Each worker's reply as the only process it had."""
    return {worker: [reply] for worker, reply in replies.items()}


def test_accounting_sums_workers_and_balances():
    totals = sample_accounting(current({
        "rollout/0": reply({"produced": 80}), "rollout/1": reply({"produced": 48}), "policy/0": reply(),
        "trainer/0": reply({"received": 112, "trained": 64, "dropped_stale": 16, "dropped_dynamic": 24,
                            "buffered": 8})}))
    assert totals["produced"] == 128
    assert totals["in_flight_at_stop"] == 16 + 8
    assert totals["balanced"]
    assert "produced 128 = trained 64 + dropped stale 16 + dropped by dynamic sampling 24 + in flight at stop 24 " \
           "(balanced)" in accounting_text(totals)


def test_accounting_counts_samples_consumed_without_training():
    totals = sample_accounting(current({"producer/0": reply({"produced": 30}), "server/0": reply(),
                                        "consumer/0": reply({"received": 25, "consumed": 25})}))
    assert totals["balanced"] and totals["in_flight_at_stop"] == 5
    assert "produced 30 = trained 0 + consumed 25 + dropped stale 0 + dropped by dynamic sampling 0 + in flight at " \
           "stop 5 (balanced)" in accounting_text(totals)
    assert not sample_accounting(current({"producer/0": reply({"produced": 30}),
                                          "consumer/0": reply({"received": 25, "consumed": 20})}))["balanced"]


def test_accounting_counts_what_a_failed_trainer_took_with_it():
    # The trainer resumed from a checkpoint: 16 trajectories it had received were neither trained nor dropped there.
    totals = sample_accounting(current({"rollout/0": reply({"produced": 128}),
                                        "trainer/0": reply({"received": 120, "trained": 96, "dropped_stale": 0,
                                                            "lost": 16, "buffered": 8})}))
    assert totals["balanced"] and totals["lost"] == 16 and totals["in_flight_at_stop"] == 8 + 8
    assert "produced 128 = trained 96 + dropped stale 0 + dropped by dynamic sampling 0 + lost with stopped workers " \
           "16 + in flight at stop 16 (balanced)" in accounting_text(totals)
    assert not sample_accounting(current({"rollout/0": reply({"produced": 128}),
                                          "trainer/0": reply({"received": 120, "trained": 96, "buffered": 8})})
                                 )["balanced"]


def test_accounting_that_does_not_add_up_says_so():
    totals = sample_accounting(current({"rollout/0": reply({"produced": 10}),
                                        "trainer/0": reply({"received": 10, "trained": 4, "buffered": 0})}))
    assert not totals["balanced"]
    assert "DOES NOT BALANCE" in accounting_text(totals)
    assert sample_accounting(current({"server/0": reply(), "x/0": {}})) is None
    # More received than any rollout produced is not balanced either.
    assert not sample_accounting(current({"rollout/0": reply({"produced": 0}),
                                          "trainer/0": reply({"received": 10, "trained": 10})}))["balanced"]


def test_accounting_keeps_what_ended_processes_did_and_counts_what_they_lost():
    # rollout/0 was relaunched: its first process produced 40 (by its last status), of which 36 reached the trainer.
    first = reply({"produced": 40, "incarnation": "rollout/0#a"})
    second = reply({"produced": 24, "incarnation": "rollout/0#b"})
    trainer = reply({"received": 56, "trained": 48, "dropped_stale": 4, "buffered": 4,
                     "received_from": {"rollout/0#a": 36, "rollout/0#b": 20}})
    totals = sample_accounting({"rollout/0": [first, second], "trainer/0": [trainer]})
    assert (totals["produced"], totals["lost"], totals["in_flight_at_stop"]) == (64, 4, 8)
    assert totals["balanced"]
    assert accounting_text(totals).endswith("+ lost with stopped workers 4 + in flight at stop 8 (balanced)")
    # Its last status predates some of its posts: what the trainer received from it was produced.
    stale = reply({"produced": 30, "incarnation": "rollout/0#a"})
    totals = sample_accounting({"rollout/0": [stale, second], "trainer/0": [trainer]})
    assert (totals["produced"], totals["lost"], totals["in_flight_at_stop"]) == (60, 0, 8)
    assert totals["balanced"]
    # A worker given up (no process follows) lost what it held; one not yet answering counts nothing.
    totals = sample_accounting({"rollout/0": [second, {}], "trainer/0": [trainer]})
    assert totals["produced"] == 24 and totals["lost"] == 4 and not totals["balanced"]
    # Consumers that do not count by producer process: unsent samples of ended producers count as in flight.
    untracked = reply({"received": 56, "trained": 48, "dropped_stale": 4, "buffered": 4})
    totals = sample_accounting({"rollout/0": [first, second], "trainer/0": [untracked]})
    assert (totals["lost"], totals["in_flight_at_stop"], totals["balanced"]) == (0, 12, True)
    assert "lost" not in accounting_text(totals)


def test_a_relaunched_trainer_that_took_over_covers_the_process_before_it():
    """The relaunched trainer took over the counters (from its checkpoint, and all received before): they cover the
    ended process, whose trees received after the checkpoint or buffered in it the new one counts as lost."""
    ended = reply({"received": 100, "trained": 80, "dropped_stale": 4, "buffered": 16,
                   "received_from": {"rollout/0#a": 100}})
    taken_over = {"received": 100, "trained": 64, "dropped_stale": 4, "lost": 32, "buffered": 0}
    resumed = reply({"received": 156, "trained": 112, "dropped_stale": 4, "lost": 32, "buffered": 8,
                     "received_from": {"rollout/0#a": 56}, "restored": taken_over})
    rollout = reply({"produced": 170, "incarnation": "rollout/0#a"})
    totals = sample_accounting({"rollout/0": [rollout], "trainer/0": [ended, resumed]})
    assert {key: totals[key] for key in ("received", "trained", "lost", "buffered", "in_flight_at_stop")} == {
        "received": 156, "trained": 112, "lost": 32, "buffered": 8, "in_flight_at_stop": 22}
    assert totals["balanced"]
    # One that took over nothing (it found no checkpoint) starts from zero: all the ended process held is lost.
    fresh = reply({"received": 56, "trained": 48, "buffered": 8, "received_from": {"rollout/0#a": 56}})
    totals = sample_accounting({"rollout/0": [rollout], "trainer/0": [ended, fresh]})
    assert {key: totals[key] for key in ("received", "trained", "lost", "buffered", "in_flight_at_stop")} == {
        "received": 156, "trained": 48, "lost": 96, "buffered": 8, "in_flight_at_stop": 22}
    assert totals["balanced"]


def write_metrics(path: Path) -> None:
    start = time.time()
    records = [{"kind": "eval", "step": 0, "time": start, "heldout_accuracy": 0.25}]
    for step in range(1, 21):
        records.append({"kind": "train", "step": step, "time": start + 3 * step, "reward_mean": -0.5 + step / 40,
                        "accuracy": 0.25 + step / 80, "trajectories_per_s": 100.0, "staleness_mean": 1.0,
                        "logprob_mismatch_on_policy": 2e-7})
        if step % 10 == 0:
            records.append({"kind": "eval", "step": step, "time": start + 3 * step + 1,
                            "heldout_accuracy": 0.25 + step / 100})
    path.write_text("\n".join(json.dumps(r) for r in records) + "\nnot json\n")


def test_training_table_and_learning_curve(tmp_path: Path):
    write_metrics(tmp_path / "metrics.jsonl")
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert len(records) == 23  # the broken line is skipped
    table = training_table(records)
    assert "held-out accuracy: 0.250 at version 0 -> 0.450 at version 20 (best 0.450)" in table
    assert "training: 20 steps in 1.0 min" in table and "logprob mismatch (engine vs trainer, same version) 2.00e-07" \
        in table
    png = plot_learning_curve(records, tmp_path / "curve.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_metrics(tmp_path / "missing.jsonl") == []


def test_steps_repeated_by_a_resumed_run_keep_their_last_record(tmp_path: Path):
    lines = [{"kind": "train", "step": 1, "time": 1.0, "accuracy": 0.1},
             {"kind": "train", "step": 2, "time": 2.0, "accuracy": 0.2},
             {"kind": "resume", "step": 1, "time": 3.0},
             {"kind": "train", "step": 2, "time": 4.0, "accuracy": 0.3}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["kind"], r["step"], r["time"]) for r in records] == [("train", 1, 1.0), ("resume", 1, 3.0),
                                                                     ("train", 2, 4.0)]


def test_progress_line_shows_the_workers_headlines():
    workers = {"trainer/0": SimpleNamespace(status="RUNNING", last_reply=reply(
                   headline={"step": "3/10", "reward": "-0.50", "eta": "1m10s"})),
               "evaluator/0": SimpleNamespace(status="RUNNING", last_reply=reply(headline={"heldout": "0.250@v0"})),
               "rollout/0": SimpleNamespace(status="RUNNING", last_reply={})}
    assert headline_text(workers) == "step 3/10 | reward -0.50 | eta 1m10s | heldout 0.250@v0"
    line = Progress(1.0, None).line(workers, 12.0, time.monotonic())
    assert line.startswith("[   12.0s] step 3/10 | reward -0.50") and line.endswith("| RUNNING 3")


def test_a_run_shorter_than_the_progress_interval_still_ends_with_a_progress_line():
    workers = {"trainer/0": SimpleNamespace(status="COMPLETED", last_reply=reply(headline={"step": "4/4"}))}
    out = io.StringIO()
    progress = Progress(60.0, out)
    progress.maybe_print(workers, 0.5)
    progress.maybe_print(workers, 0.6)  # within the interval: nothing more
    progress.print_final(workers, 0.7)
    assert out.getvalue().splitlines() == ["[    0.5s] step 4/4 | COMPLETED 1", "[    0.7s] step 4/4 | COMPLETED 1"]
    silent = io.StringIO()
    Progress(0.0, silent).print_final(workers, 0.7)
    assert silent.getvalue() == ""
