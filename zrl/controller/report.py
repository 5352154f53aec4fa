"""The end-of-run report: sample accounting from the workers' counters, and a training summary from
`metrics.jsonl` (a table on the terminal and `learning_curve.png` in the run directory).

Workers report what they count under `stats.accounting` in their status: rollout workers `produced`, trainers
`received`, `trained`, `dropped_stale`, `dropped_dynamic`, `buffered` and `lost` (received by a trainer that
stopped or failed, and not trained in the checkpoint its successor resumed from; all in trajectories); a consumer
that uses samples without training on them (the echo demo's) reports `received` and `consumed`, and its producers
`produced`. The run balances when everything received is trained, consumed, dropped, lost or still buffered, and
nothing was received that was not produced.

Every process of a worker counts. A worker that took over counters (a trainer from its checkpoint, a rollout worker
of a resumed trial) reports them in its counters, which run on from there, and what it took over under `restored`:
its counters cover the processes before it. A process that took over nothing counts from zero, and the processes
of its worker that ended before it add the counters of their last status reply; what such an ended process held
(trained, consumed or buffered) was lost with it. Producers name their process in `accounting.incarnation` and
stamp it on their samples, and consumers count what they received from each under `accounting.received_from`:
what an ended producer process produced and no consumer received (unsent in its sockets) was lost too; without
those counts it stays in flight.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ACCOUNTING_KEYS = ("produced", "received", "trained", "consumed", "dropped_stale", "dropped_dynamic", "lost",
                   "buffered")
HELD_KEYS = ("trained", "consumed", "buffered")
"""What a consumer holds of its samples (in its weights, its results or its buffer): lost when its process ends,
unless a successor took it over."""
CURVE_FILE = "learning_curve.png"


def sample_accounting(processes: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any] | None:
    """Sum the `accounting` counters of every process of every worker; None when no worker reports any.

    `processes` holds, for each worker, the status replies of its processes, oldest first: each but the last is the
    final reply of a process that ended (the worker was relaunched, requeued or given up), the last is the reply of
    the current process ({} when none runs).
    """
    totals = dict.fromkeys(ACCOUNTING_KEYS, 0)
    produced_by: dict[str, tuple[int, bool]] = {}
    """Producer process -> (samples it produced itself, whether it ended)."""
    received_from: Counter[str] = Counter()
    tracked = False
    found = False
    for replies in processes.values():
        chain = [_counters(reply) for reply in replies]
        # The newest process that took over counters covers every process before it.
        first = max((i for i, counters in enumerate(chain) if counters and _restored(counters)), default=0)
        for i, counters in enumerate(chain):
            if counters is None:
                continue
            found = True
            base = _restored(counters)
            ended = i < len(chain) - 1
            if isinstance(counters.get("received_from"), Mapping):
                tracked = True  # what each process received is its own, covered or not
                received_from.update(_by_source(counters["received_from"]))
                received_from.subtract(_by_source(base.get("received_from")))
            if counters.get("incarnation"):
                own = _count(counters, "produced") - _count(base, "produced")
                produced_by[str(counters["incarnation"])] = (own, ended)
            if i < first:
                continue
            for key in ACCOUNTING_KEYS:
                totals[key] += _count(counters, key)
            if ended:
                for key in HELD_KEYS:
                    totals[key] -= _count(counters, key)
                    totals["lost"] += _count(counters, key)
    if not found:
        return None
    lost_by_producers = 0
    for incarnation, (produced, ended) in produced_by.items() if tracked else ():
        delivered = received_from.get(incarnation, 0)
        if ended and delivered > produced:
            totals["produced"] += delivered - produced  # it posted more after its last status reply
        elif ended:
            lost_by_producers += produced - delivered
    totals["lost"] += lost_by_producers
    totals["in_flight_at_stop"] = (totals["produced"] - totals["received"] - lost_by_producers) + totals["buffered"]
    accounted = (totals["trained"] + totals["consumed"] + totals["dropped_stale"] + totals["dropped_dynamic"]
                 + totals["lost"] - lost_by_producers)
    totals["balanced"] = (totals["received"] == accounted + totals["buffered"]
                          and totals["received"] + lost_by_producers <= totals["produced"])
    return totals


def _counters(reply: Mapping[str, Any]) -> Mapping[str, Any] | None:
    counters = (reply.get("stats") or {}).get("accounting")
    return counters if isinstance(counters, Mapping) else None


def _restored(counters: Mapping[str, Any]) -> Mapping[str, Any]:
    restored = counters.get("restored")
    return restored if isinstance(restored, Mapping) else {}


def _count(counters: Mapping[str, Any], key: str) -> int:
    return int(counters.get(key, 0))


def _by_source(counts: Any) -> Counter[str]:
    return Counter({str(k): int(v) for k, v in counts.items()}) if isinstance(counts, Mapping) else Counter()


def accounting_text(totals: Mapping[str, Any]) -> str:
    verdict = "balanced" if totals["balanced"] else "DOES NOT BALANCE"
    consumed = f" + consumed {totals['consumed']}" if totals["consumed"] else ""
    lost = f" + lost with stopped workers {totals['lost']}" if totals.get("lost") else ""
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
