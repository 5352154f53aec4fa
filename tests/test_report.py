"""The end-of-run report: sample accounting, the training table, the learning curve and the progress headline."""

from __future__ import annotations

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


def test_accounting_sums_workers_and_balances():
    totals = sample_accounting({
        "rollout/0": reply({"produced": 80}), "rollout/1": reply({"produced": 48}), "policy/0": reply(),
        "trainer/0": reply({"received": 112, "trained": 64, "dropped_stale": 16, "dropped_dynamic": 24,
                            "buffered": 8})})
    assert totals["produced"] == 128
    assert totals["in_flight_at_stop"] == 16 + 8
    assert totals["balanced"]
    assert "produced 128 = trained 64 + dropped stale 16 + dropped by dynamic sampling 24 + in flight at stop 24 " \
           "(balanced)" in accounting_text(totals)


def test_accounting_counts_samples_consumed_without_training():
    totals = sample_accounting({"producer/0": reply({"produced": 30}), "server/0": reply(),
                                "consumer/0": reply({"received": 25, "consumed": 25})})
    assert totals["balanced"] and totals["in_flight_at_stop"] == 5
    assert "produced 30 = trained 0 + consumed 25 + dropped stale 0 + dropped by dynamic sampling 0 + in flight at " \
           "stop 5 (balanced)" in accounting_text(totals)
    assert not sample_accounting({"producer/0": reply({"produced": 30}),
                                  "consumer/0": reply({"received": 25, "consumed": 20})})["balanced"]


def test_accounting_counts_what_a_failed_trainer_took_with_it():
    # The trainer resumed from a checkpoint: 16 trajectories it had received were neither trained nor dropped there.
    totals = sample_accounting({"rollout/0": reply({"produced": 128}),
                                "trainer/0": reply({"received": 120, "trained": 96, "dropped_stale": 0,
                                                    "lost": 16, "buffered": 8})})
    assert totals["balanced"] and totals["lost"] == 16 and totals["in_flight_at_stop"] == 8 + 8
    assert "produced 128 = trained 96 + dropped stale 0 + dropped by dynamic sampling 0 + lost with a stopped trainer " \
           "16 + in flight at stop 16 (balanced)" in accounting_text(totals)
    assert not sample_accounting({"rollout/0": reply({"produced": 128}),
                                  "trainer/0": reply({"received": 120, "trained": 96, "buffered": 8})})["balanced"]


def test_accounting_that_does_not_add_up_says_so():
    totals = sample_accounting({"rollout/0": reply({"produced": 10}),
                                "trainer/0": reply({"received": 10, "trained": 4, "buffered": 0})})
    assert not totals["balanced"]
    assert "DOES NOT BALANCE" in accounting_text(totals)
    assert sample_accounting({"server/0": reply(), "x/0": {}}) is None
    # More received than any rollout produced is not balanced either.
    assert not sample_accounting({"rollout/0": reply({"produced": 0}),
                                  "trainer/0": reply({"received": 10, "trained": 10})})["balanced"]


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
