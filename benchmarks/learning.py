"""Learning: greedy accuracy against minutes of training, zrl's main job against TRL's GRPOTrainer, by a protocol
that keeps every choice off the test set.

    python benchmarks/learning.py sweep  [--lrs 4e-5 8e-5 1.6e-4] [--minutes 10]   # choose, on validation
    python benchmarks/learning.py report [--seeds 0 1 2] [--minutes 10]            # measure, on the test set

Both sides start from the shipped tiny model, train on the same synthetic problems and are judged by the same
evaluation (`zrl.rl.evaluation`: greedy, 64 new tokens, zrl's verifier, 200 problems). zrl runs
`experiments/treepo_math.py` as `make run` does, with `lr`, `seed`, the evaluated split and (`--zrl-steps`) the run
length overridden; the peer is `benchmarks/trl_grpo_peer.py` for `--minutes` of training. Runs go one after the other, each with the
whole machine.

`sweep` runs each learning rate once per side on the validation split and picks, per side, the one whose curve has
the highest mean accuracy at minutes 1..M; the choice goes to benchmarks/learning_choice.json and to the
"learning_sweep" section of docs/benchmarks.md. `report` runs each side at its chosen learning rate with every
seed on the held-out (test) split, which no choice has seen, and writes the "learning" section: per minute the mean
and range over seeds, zrl's gain, and the time zrl takes to reach what the peer's best run has at the end.
zrl's times count from its first training step (its evaluations run beside training, on the same two cores); the
peer's count its training alone (its evaluations are excluded). A run that has ended keeps its last evaluation.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from learning_curves import (
    Curve,
    accuracy_at,
    best_setting,
    mean_after_first_minute,
    minutes_grid,
    spread,
    time_to_reach,
)
from report import markdown_table, update_section

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = REPO / "experiments" / "treepo_math.py"
PEER = Path(__file__).resolve().parent / "trl_grpo_peer.py"
CHOICE_FILE = Path(__file__).resolve().parent / "learning_choice.json"
RUNS_FILE = Path(__file__).resolve().parent / "learning_runs.json"
SIDES = ("zrl", "TRL")
DEFAULT_LRS = (4e-5, 8e-5, 1.6e-4)
PEER_SETTINGS = ("8 prompts x 8 generations, 64 new tokens, DAPO loss, clip 0.2/0.28, no KL, constant learning rate "
                 "(TRL's linear decay over its open-ended run), gradient checkpointing off")


def run_zrl(lr: float, seed: int, split: str, root: Path, extra: list[str]) -> Curve:
    """(seconds since the first training step, accuracy) of each evaluation of one run of the main job."""
    trial = f"learning-{int(time.time())}-{seed}"
    argv = [sys.executable, "-m", "zrl.controller", str(EXPERIMENT), f"trial={trial}", f"run_root={root}",
            "progress_interval_s=30", f"lr={lr}", f"seed={seed}", f"heldout.split={split}", *extra]
    print(f"== zrl lr={lr} seed={seed} on {split} {' '.join(extra)}", flush=True)
    if subprocess.run(argv, cwd=REPO).returncode != 0:
        raise SystemExit("the zrl run failed; see its output above")
    records = [json.loads(line) for line in (root / "treepo_math" / trial / "metrics.jsonl").read_text().splitlines()]
    start = min(r["time"] - r.get("elapsed_s", 0.0) for r in records if r["kind"] == "train")
    evals = sorted((r for r in records if r["kind"] == "eval"), key=lambda r: r["step"])
    return [(max(0.0, r["time"] - start) if r["step"] else 0.0, r["heldout_accuracy"]) for r in evals]


def run_peer(python: str, lr: float, seed: int, split: str, minutes: float, output_dir: Path) -> Curve:
    argv = [python, str(PEER), "--minutes", f"{minutes:.2f}", "--lr", str(lr), "--seed", str(seed),
            "--split", split, "--output-dir", str(output_dir)]
    print(f"== TRL lr={lr} seed={seed} on {split}", flush=True)
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
    return [(p["train_s"], p["accuracy"]) for p in points]


def run_side(side: str, args: argparse.Namespace, lr: float, seed: int, split: str, tmp: Path) -> Curve:
    if side == "zrl":
        steps = [f"total_steps={args.zrl_steps}"] if args.zrl_steps else []
        return run_zrl(lr, seed, split, tmp / "zrl", [*steps, *args.zrl_override])
    return run_peer(args.peer_python, lr, seed, split, args.minutes, tmp / f"peer-{lr}-{seed}")


def _fmt(values: tuple[float, float, float]) -> str:
    mean, low, high = values
    return f"{mean:.3f} ({low:.3f}-{high:.3f})"


def _curve_text(curve: Curve) -> str:
    return ", ".join(f"{accuracy:.3f}@{t / 60:.1f}" for t, accuracy in curve)


def sweep(args: argparse.Namespace) -> None:
    runs: dict[str, dict[float, Curve]] = {side: {} for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="zrl-learning-") as tmp:
        for lr in args.lrs:
            for side in SIDES:
                runs[side][lr] = run_side(side, args, lr, args.seed, "validation", Path(tmp))
    scores = {side: {lr: mean_after_first_minute(curve, args.minutes) for lr, curve in by_lr.items()}
              for side, by_lr in runs.items()}
    chosen = {side: best_setting({lr: [score] for lr, score in by_lr.items()}) for side, by_lr in scores.items()}
    CHOICE_FILE.write_text(json.dumps({
        "split": "validation", "minutes": args.minutes, "seed": args.seed, "measured": datetime.date.today().isoformat(),
        "lr": chosen, "scores": {side: {str(lr): round(s, 4) for lr, s in by_lr.items()} for side, by_lr in scores.items()},
        "curves": {side: {str(lr): curve for lr, curve in by_lr.items()} for side, by_lr in runs.items()}}, indent=1) + "\n")
    rows = [[f"{lr:g}", f"{scores['zrl'][lr]:.3f}", f"{scores['TRL'][lr]:.3f}"] for lr in args.lrs]
    body = (f"Learning-rate sweep on the **validation** split (200 problems, disjoint from the test set), seed "
            f"{args.seed}, one run per side and rate. Score: mean greedy accuracy at minutes 1..{args.minutes:g}. "
            f"zrl: `experiments/treepo_math.py` ({args.zrl_steps or 'its default'} steps, cosine decay to a tenth) with `lr=`; "
            "TRL GRPOTrainer: "
            f"{PEER_SETTINGS}.\n\n" + markdown_table(["lr", "zrl", "TRL"], rows)
            + f"\n\nChosen: zrl lr {chosen['zrl']:g}, TRL lr {chosen['TRL']:g} (in `benchmarks/learning_choice.json`, "
            "read by `make bench-learning`).\n\nCurves (accuracy@minute):\n\n"
            + "\n".join(f"- {side} lr {lr:g}: {_curve_text(curve)}" for side in SIDES for lr, curve in runs[side].items())
            + "\n")
    print(body)
    if not args.no_doc:
        update_section("learning_sweep", "Learning: the learning-rate sweep (validation)",
                       "make bench-learning-sweep", body)


def report(args: argparse.Namespace) -> None:
    if not CHOICE_FILE.exists():
        raise SystemExit(f"no {CHOICE_FILE.name}: run `make bench-learning-sweep` first, to choose each side's "
                         "learning rate on the validation split")
    choice = json.loads(CHOICE_FILE.read_text())
    lrs = {side: float(choice["lr"][side]) for side in SIDES}
    runs: dict[str, list[Curve]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="zrl-learning-") as tmp:
        for seed in args.seeds:
            for side in SIDES:
                runs[side].append(run_side(side, args, lrs[side], seed, "heldout", Path(tmp)))
    RUNS_FILE.write_text(json.dumps({
        "split": "heldout", "minutes": args.minutes, "seeds": args.seeds, "zrl_steps": args.zrl_steps, "lr": lrs,
        "chosen_on": choice["measured"], "measured": datetime.date.today().isoformat(), "curves": runs}) + "\n")
    render(json.loads(RUNS_FILE.read_text()), args.no_doc)


def render(saved: dict, no_doc: bool) -> None:
    """The report's table and verdicts from the saved curves (`benchmarks/learning_runs.json`)."""
    runs: dict[str, list[Curve]] = {side: [tuple(point) for point in saved["curves"][side]] for side in SIDES}
    minutes, seeds, lrs = saved["minutes"], saved["seeds"], saved["lr"]
    rows, above = [], []
    for minute in minutes_grid(minutes):
        at = {side: spread([accuracy_at(curve, 60.0 * minute) for curve in runs[side]]) for side in SIDES}
        lead = at["zrl"][0] - at["TRL"][0]
        if minute >= 2:
            above.append(lead > 0)
        rows.append([str(minute), _fmt(at["zrl"]), _fmt(at["TRL"]), f"{lead * 100:+.1f}"])
    start = spread([curve[0][1] for curve in runs["zrl"]])[0]
    gains = [max(accuracy for t, accuracy in curve if t <= 60.0 * minutes) - curve[0][1] for curve in runs["zrl"]]
    peer_best = max(accuracy_at(curve, 60.0 * minutes) for curve in runs["TRL"])
    reach = [time_to_reach(curve, peer_best) for curve in runs["zrl"]]
    ratios = [f"{t / (60.0 * minutes):.2f}" if t is not None else "not reached" for t in reach]
    half = all(t is not None and t <= 30.0 * minutes for t in reach)
    steps = saved.get("zrl_steps")
    body = (f"Greedy accuracy on the **held-out test** split (200 problems that no choice has seen) against minutes "
            f"of training, {len(seeds)} seeds per side ({', '.join(map(str, seeds))}): mean (lowest-highest). "
            "zrl: `experiments/treepo_math.py` as `make run` runs it"
            + (f" with total_steps={steps}" if steps else "")
            + f" (cosine decay to a tenth over the run), lr {lrs['zrl']:g}; TRL GRPOTrainer, lr {lrs['TRL']:g}, "
            f"{PEER_SETTINGS}. Each side's learning rate is its best on the validation split (section below, "
            f"{saved['chosen_on']}). Both start from the shipped model and are judged by the same evaluation "
            "(`zrl.rl.evaluation`).\n\n"
            + markdown_table(["minute", "zrl", "TRL", "zrl - TRL (points)"], rows)
            + f"\n\n- zrl above TRL (means) at every minute after the first (2-{minutes:g}): "
            f"**{'yes' if all(above) else 'no'}**"
            + f"\n- zrl's best gain over its start ({start:.3f}) within {minutes:g} min, per seed: "
            + ", ".join(f"{g * 100:+.1f}" for g in gains) + " points (target >= +15: "
            f"**{'yes' if min(gains) >= 0.15 else 'no'}**)"
            + f"\n- Time to accuracy: TRL's best run has {peer_best:.3f} after {minutes:g} min; zrl reaches it in "
            + ", ".join(f"{t / 60:.1f} min" if t is not None else "never" for t in reach)
            + f" (ratio to {minutes:g} min per seed: {', '.join(ratios)}; at most 0.5 in every seed: "
            f"**{'yes' if half else 'no'}**)\n\nCurves (accuracy@minute; the exact times are in "
            "`benchmarks/learning_runs.json`):\n\n"
            + "\n".join(f"- {side} seed {seed}: {_curve_text(curve)}"
                        for side in SIDES for seed, curve in zip(seeds, runs[side], strict=True)) + "\n")
    print(body)
    if not no_doc:
        update_section("learning", "Learning: zrl against TRL's GRPOTrainer (test set)", "make bench-learning", body,
                       measured=saved["measured"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("sweep", "report", "render"),
                        help="render: the report's section again from benchmarks/learning_runs.json, without running")
    parser.add_argument("--peer-python", default=str(REPO / ".venv-peer" / "bin" / "python"),
                        help="a Python with TRL installed (make bench-learning sets one up)")
    parser.add_argument("--minutes", type=float, default=10.0, help="the peer's training time per run")
    parser.add_argument("--lrs", type=float, nargs="+", default=list(DEFAULT_LRS), help="sweep: learning rates")
    parser.add_argument("--seed", type=int, default=0, help="sweep: the seed of every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="report: seeds per side (>= 3)")
    parser.add_argument("--zrl-steps", type=int, default=0,
                        help="zrl's run length in steps (0: the experiment's, 2000, about 9 min on this project's "
                             "machine, as long as the peer's --minutes)")
    parser.add_argument("--zrl-override", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra overrides of every zrl run")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    if args.mode == "render":
        render(json.loads(RUNS_FILE.read_text()), args.no_doc)
        return
    if not Path(args.peer_python).exists():
        raise SystemExit(f"no peer Python at {args.peer_python}: run `bash scripts/setup-peer-env.sh` first "
                         f"(or `make bench-learning`)")
    if args.mode == "report" and len(args.seeds) < 3:
        raise SystemExit("report: give at least 3 seeds (--seeds 0 1 2), so that a spread is measured")
    sweep(args) if args.mode == "sweep" else report(args)


if __name__ == "__main__":
    main()
