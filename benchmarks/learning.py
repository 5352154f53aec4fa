"""Learning: held-out greedy accuracy against wall time, zrl's TreePO run against TRL's GRPOTrainer, in one run.

    python benchmarks/learning.py [--peer-python .venv-peer/bin/python] [--peer-lr 3e-5] [overrides ...]

First `python -m zrl.controller experiments/treepo_math.py` with its defaults (and the given overrides); then the
peer, `benchmarks/trl_grpo_peer.py`, on the same tiny model, training problems and 200 held-out problems, for as
long as zrl's run took. The two run one after the other, each with the whole machine. zrl's times are wall time
from the first training step (its evaluations run beside training); the peer's are its training time alone
(evaluations excluded). Reports both curves, zrl's gain and whether zrl is above the peer at every peer evaluation
after the first two minutes. The figures go to the "learning" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import markdown_table, update_section

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = REPO / "experiments" / "treepo_math.py"
PEER = Path(__file__).resolve().parent / "trl_grpo_peer.py"
GRACE_S = 120.0


def run_zrl(overrides: list[str], root: Path) -> list[tuple[float, float]]:
    """(seconds since the first training step, held-out accuracy) of each evaluation."""
    trial = f"learning-{int(time.time())}"
    argv = [sys.executable, "-m", "zrl.controller", str(EXPERIMENT), f"trial={trial}", f"run_root={root}",
            "progress_interval_s=30", *overrides]
    if subprocess.run(argv, cwd=REPO).returncode != 0:
        raise SystemExit("the zrl run failed; see its output above")
    records = [json.loads(line) for line in (root / "treepo_math" / trial / "metrics.jsonl").read_text().splitlines()]
    start = min(r["time"] - r.get("elapsed_s", 0.0) for r in records if r["kind"] == "train")
    evals = sorted((r for r in records if r["kind"] == "eval"), key=lambda r: r["step"])
    return [(max(0.0, r["time"] - start) if r["step"] else 0.0, r["heldout_accuracy"]) for r in evals]


def run_peer(python: str, lr: float, minutes: float, output_dir: Path) -> list[tuple[float, float]]:
    argv = [python, str(PEER), "--minutes", f"{minutes:.2f}", "--lr", str(lr), "--output-dir", str(output_dir)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    points = []
    with subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True) as peer:
        for line in peer.stdout:
            # TRL prints its own logs as Python dicts; the peer's points are JSON objects.
            if line.startswith('{"'):
                points.append(json.loads(line))
                print("TRL", line.strip(), flush=True)
    if peer.returncode != 0 or not points:
        raise SystemExit(f"the peer run failed ({peer.returncode}) after {len(points)} evaluations")
    return [(p["train_s"], p["heldout_accuracy"]) for p in points]


def accuracy_at(curve: list[tuple[float, float]], seconds: float) -> float:
    """The latest evaluation at or before `seconds` (what a user watching the run would have seen)."""
    return [acc for t, acc in curve if t <= seconds][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-python", default=str(REPO / ".venv-peer" / "bin" / "python"),
                        help="a Python with TRL installed (make bench-learning sets one up)")
    parser.add_argument("--peer-lr", type=float, default=3e-5)
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for the zrl run")
    args = parser.parse_args()
    if not Path(args.peer_python).exists():
        raise SystemExit(f"no peer Python at {args.peer_python}: run `bash scripts/setup-peer-env.sh` first "
                         f"(or `make bench-learning`)")
    with tempfile.TemporaryDirectory(prefix="zrl-learning-") as tmp:
        ours = run_zrl(args.overrides, Path(tmp))
        print("zrl", ours, flush=True)
        peer = run_peer(args.peer_python, args.peer_lr, ours[-1][0] / 60, Path(tmp) / "peer")
        print("TRL", peer, flush=True)
    checked = [t for t, _ in peer if t >= GRACE_S]
    above = all(accuracy_at(ours, t) > accuracy_at(peer, t) for t in checked)
    rows = [[f"{t / 60:.1f}", f"{accuracy_at(ours, t):.3f}", f"{acc:.3f}"] for t, acc in peer]
    gain = max(acc for _, acc in ours) - ours[0][1]
    body = ("Held-out greedy accuracy (200 synthetic problems) of the tiny model, against minutes of training. zrl: "
            f"`experiments/treepo_math.py`, overrides {' '.join(args.overrides) or 'none'}; TRL GRPOTrainer at lr "
            f"{args.peer_lr} (8 prompts x 8 generations, 64 new tokens, DAPO loss, clip 0.2/0.28, no KL), run "
            "one after the other. zrl's value at a peer evaluation is its latest evaluation by then.\n\n"
            + markdown_table(["minute", "zrl", "TRL"], rows)
            + "\n\nzrl evaluations: " + ", ".join(f"{acc:.3f} at {t / 60:.1f} min" for t, acc in ours)
            + f"\n\nzrl: {ours[0][1]:.3f} -> {ours[-1][1]:.3f} (best gain {gain * 100:+.1f} points, target >= +15); "
            f"above TRL at every peer evaluation after {GRACE_S / 60:.0f} min: **{'yes' if above else 'no'}**\n")
    print(body)
    if not args.no_doc:
        update_section("learning", "Learning: zrl against TRL's GRPOTrainer", "make bench-learning", body)


if __name__ == "__main__":
    main()
