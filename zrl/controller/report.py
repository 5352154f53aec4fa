"""The end-of-run report: sample accounting from the workers' counters, and a training summary from
`metrics.jsonl` (a table on the terminal and `learning_curve.png` in the run directory).

Workers report what they count under `stats.accounting` in their status: rollout workers `produced`, trainers
`received`, `trained`, `dropped_stale`, `dropped_dynamic`, `buffered` and `lost` (received by a trainer that
stopped or failed, and not trained in the checkpoint its successor resumed from; all in trajectories); a consumer that uses
samples without training on them (the echo demo's) reports `received` and `consumed`, and its producers
`produced`. A worker that took over counters (a trainer from its checkpoint, a rollout worker of a resumed trial)
reports them in its counters, which run on from there, and what it took over under `restored`; the totals here sum
the counters as they are, so they cover the whole trial. The run balances when everything received is trained, consumed, dropped, lost or still buffered, and
nothing was received that was not produced.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ACCOUNTING_KEYS = ("produced", "received", "trained", "consumed", "dropped_stale", "dropped_dynamic", "lost",
                   "buffered")
CURVE_FILE = "learning_curve.png"


def sample_accounting(last_replies: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """Sum the `accounting` counters of every worker; None when no worker reports any."""
    totals = dict.fromkeys(ACCOUNTING_KEYS, 0)
    found = False
    for reply in last_replies.values():
        counters = (reply.get("stats") or {}).get("accounting")
        if not isinstance(counters, Mapping):
            continue
        found = True
        for key in ACCOUNTING_KEYS:
            totals[key] += int(counters.get(key, 0))
    if not found:
        return None
    totals["in_flight_at_stop"] = (totals["produced"] - totals["received"]) + totals["buffered"]
    accounted = (totals["trained"] + totals["consumed"] + totals["dropped_stale"] + totals["dropped_dynamic"]
                 + totals["lost"])
    totals["balanced"] = (totals["received"] == accounted + totals["buffered"]
                          and totals["received"] <= totals["produced"])
    return totals


def accounting_text(totals: Mapping[str, Any]) -> str:
    verdict = "balanced" if totals["balanced"] else "DOES NOT BALANCE"
    consumed = f" + consumed {totals['consumed']}" if totals["consumed"] else ""
    lost = f" + lost with a stopped trainer {totals['lost']}" if totals.get("lost") else ""
    return (f"sample accounting: produced {totals['produced']} = trained {totals['trained']}{consumed} + dropped "
            f"stale {totals['dropped_stale']} + dropped by dynamic sampling {totals['dropped_dynamic']}{lost} + in "
            f"flight at stop {totals['in_flight_at_stop']} ({verdict})")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file; a line that does not parse is skipped. A step recorded again keeps only
    its last record: a resumed run repeats the steps that were trained after its checkpoint."""
    records: dict[tuple[str, Any], dict[str, Any]] = {}
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "kind" in record and "step" in record:
            key = (record["kind"], record["step"])
            records.pop(key, None)
            records[key] = record
    return list(records.values())


def training_table(records: list[dict[str, Any]]) -> str:
    """Held-out accuracy by version, and the training figures at the end."""
    evals = sorted((r for r in records if r["kind"] == "eval"), key=lambda r: r["step"])
    train = sorted((r for r in records if r["kind"] == "train"), key=lambda r: r["step"])
    start = min(r["time"] for r in records)
    lines = ["held-out greedy accuracy by version:", f"  {'version':>7}  {'minute':>6}  {'accuracy':>8}"]
    lines += [f"  {r['step']:>7}  {(r['time'] - start) / 60:>6.1f}  {r['heldout_accuracy']:>8.3f}" for r in evals]
    if train:
        tail = train[-10:]
        mismatch = [r["logprob_mismatch_on_policy"] for r in train if "logprob_mismatch_on_policy" in r]
        lines.append(
            f"training: {train[-1]['step']} steps in {(train[-1]['time'] - start) / 60:.1f} min; last 10 steps: "
            f"reward {_mean(tail, 'reward_mean'):+.3f}, accuracy {_mean(tail, 'accuracy'):.3f}, "
            f"{_mean(train, 'trajectories_per_s'):.0f} trajectories/s on average, staleness "
            f"{_mean(train, 'staleness_mean'):.2f}; logprob mismatch (engine vs trainer, same version) "
            + (f"{sum(mismatch) / len(mismatch):.2e}" if mismatch else "not measured"))
    if len(evals) >= 2:
        lines.append(f"held-out accuracy: {evals[0]['heldout_accuracy']:.3f} at version {evals[0]['step']} -> "
                     f"{evals[-1]['heldout_accuracy']:.3f} at version {evals[-1]['step']} "
                     f"(best {max(r['heldout_accuracy'] for r in evals):.3f})")
    return "\n".join(lines)


def plot_learning_curve(records: list[dict[str, Any]], path: Path) -> Path | None:
    """Held-out accuracy and train reward against step and against time; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    evals = sorted((r for r in records if r["kind"] == "eval"), key=lambda r: r["step"])
    train = sorted((r for r in records if r["kind"] == "train"), key=lambda r: r["step"])
    start = min(r["time"] for r in records)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, x_of, label in ((axes[0], lambda r: r["step"], "step (version)"),
                              (axes[1], lambda r: (r["time"] - start) / 60, "minutes")):
        axis.plot([x_of(r) for r in evals], [r["heldout_accuracy"] for r in evals], "o-",
                  label="held-out greedy accuracy")
        axis.plot([x_of(r) for r in train], _rolling([float(r.get("accuracy", 0.0)) for r in train], 20),
                  alpha=0.7, label="train accuracy (sampled, mean of 20 steps)")
        axis.set_xlabel(label)
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left")
    figure.suptitle("learning curve")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _rolling(values: list[float], window: int) -> list[float]:
    """The mean of each value and up to `window - 1` before it."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _mean(records: list[dict[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in records if key in r and not math.isnan(float(r[key]))]
    return sum(values) / len(values) if values else float("nan")
