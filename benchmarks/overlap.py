"""Throughput of the whole TreePO run, rollout and training overlapped, against the same workers in lockstep.

    python benchmarks/overlap.py [--steps 30] [--repeats 1] [overrides ...]

Both runs are `python -m zrl.controller experiments/treepo_math.py` with the same overrides. Overlapped is the
experiment's default (rollout runs up to `max_staleness` versions ahead of the trainer); lockstep is
`max_staleness=0`: the rollout worker starts the trees of version v+1 only once the trainer has pushed v+1, so
generation and training take turns. Throughput is trajectories trained per second between the first and the last
step. The figures go to the "overlap" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import markdown_table, update_section

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = REPO / "experiments" / "treepo_math.py"


def run(mode: str, steps: int, overrides: list[str], root: Path) -> dict[str, float]:
    trial = f"{mode}-{int(time.time())}"
    extra = ["max_staleness=0"] if mode == "lockstep" else []
    argv = [sys.executable, "-m", "zrl.controller", str(EXPERIMENT), f"trial={trial}", f"run_root={root}",
            f"total_steps={steps}", "eval_every=1000000", "progress_interval_s=0", *overrides, *extra]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"{mode} run failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    records = [json.loads(line) for line in (root / "treepo_math" / trial / "metrics.jsonl").read_text().splitlines()]
    train = sorted((r for r in records if r["kind"] == "train"), key=lambda r: r["step"])
    seconds = train[-1]["time"] - train[0]["time"]
    trajectories = sum(r["trajectories"] for r in train[1:])
    return {"trajectories_per_s": trajectories / seconds, "seconds": seconds,
            "staleness": sum(r["staleness_mean"] for r in train) / len(train)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for both runs")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"overlapped": [], "lockstep": []}
    with tempfile.TemporaryDirectory(prefix="zrl-overlap-") as tmp:
        for _ in range(args.repeats):
            # Alternate the order, so a drift in machine load does not favour one mode.
            for mode in ("lockstep", "overlapped") if _ % 2 == 0 else ("overlapped", "lockstep"):
                results[mode].append(run(mode, args.steps, args.overrides, Path(tmp)))
                print(mode, results[mode][-1], flush=True)
    best = {mode: max(runs, key=lambda r: r["trajectories_per_s"]) for mode, runs in results.items()}
    ratio = best["overlapped"]["trajectories_per_s"] / best["lockstep"]["trajectories_per_s"]
    rows = [[mode, f"{r['trajectories_per_s']:.1f}", f"{r['seconds']:.1f}", f"{r['staleness']:.2f}"]
            for mode, r in best.items()]
    body = (f"`experiments/treepo_math.py` (tiny model, hf engine, 1 policy, 1 rollout, 1 trainer, 1 evaluator on "
            f"this machine), {args.steps} steps, overrides {' '.join(args.overrides) or 'none'}; best of "
            f"{args.repeats} run(s) per mode.\n\n"
            + markdown_table(["mode", "trajectories trained / s", "first to last step s", "mean staleness"], rows)
            + f"\n\noverlapped / lockstep: **{ratio:.2f}x** (target >= 1.3x)\n")
    print(body)
    if not args.no_doc:
        update_section("overlap", "Overlapped rollout and training vs lockstep", "make bench-overlap", body)


if __name__ == "__main__":
    main()
