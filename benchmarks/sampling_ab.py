"""Trees against independent samples: which way of sampling learns more per minute on the long task, by the same
protocol as the learning benchmark (choose on the validation split, report on the test set, at least 3 seeds).

    python benchmarks/sampling_ab.py sweep  [--minutes 5] [--steps 400] [--tree-steps 600]  # make bench-sampling-sweep
    python benchmarks/sampling_ab.py report [--seeds 0 1 2]                # make bench-sampling
    python benchmarks/sampling_ab.py render                                # the report again from the saved curves

Every run is `experiments/treepo_math.py` with `task=long` (answers of about 130 tokens), 16 trajectories per
problem, 4 problems per step, the same learning rate and schedule, and one arm's sampling and credit settings. The
sweep runs every arm once, an independent arm for `--steps` steps and a tree arm for `--tree-steps` (trees make
more steps per minute, so that both kinds are measured over the whole `--minutes`); the best tree arm and the best independent arm (by mean validation
accuracy at minutes 1..M) go to `benchmarks/sampling_ab_choice.json`. The report runs those two with every seed on
the held-out split, each for as many steps as it made in the sweep in the time the slower of the two took (equal
wall-clock), and writes the "sampling_ab" section of docs/benchmarks.md: per minute the mean and
range over seeds, and whether trees are at least as good at every minute after the first two. Runs go one after the
other, each with the whole machine; times count from the first training step.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

from learning import run_zrl
from learning_curves import Curve, accuracy_at, best_setting, mean_after_first_minute, minutes_grid, spread
from report import markdown_table, update_section

HERE = Path(__file__).resolve().parent
CHOICE_FILE = HERE / "sampling_ab_choice.json"
RUNS_FILE = HERE / "sampling_ab_runs.json"
COMMON = ("task=long", "tree.width=16", "tree.max_depth=8", "prompts_per_step=4", "eval_every=25")
ARMS: dict[str, tuple[str, ...]] = {
    "independent, per-group scale": ("tree.mode=independent", "tree.segment_len=32", "credit=trajectory",
                                     "advantage_scale=tree"),
    "independent, batch scale": ("tree.mode=independent", "tree.segment_len=32", "credit=trajectory",
                                 "advantage_scale=batch"),
    "tree l=32, trajectory credit": ("tree.mode=tree", "tree.segment_len=32", "credit=trajectory",
                                     "advantage_scale=tree"),
    "tree l=32, trajectory credit, 4 initial paths": ("tree.mode=tree", "tree.segment_len=32", "tree.branching=4",
                                                      "credit=trajectory", "advantage_scale=tree"),
    "tree l=32, trajectory credit, 2-8 initial paths": ("tree.mode=tree", "tree.segment_len=32",
                                                        "tree.random_initial_divergence=true", "credit=trajectory",
                                                        "advantage_scale=tree"),
    "tree l=32, segment credit, 4 initial paths": ("tree.mode=tree", "tree.segment_len=32", "tree.branching=4",
                                                   "credit=segment", "advantage_scale=tree"),
}
LR = 8e-5


def is_tree(arm: str) -> bool:
    return arm.startswith("tree")


def run_arm(arm: str, seed: int, split: str, steps: int, root: Path) -> Curve:
    return run_zrl(LR, seed, split, root, [*COMMON, *ARMS[arm], f"total_steps={steps}"])


def _fmt(values: tuple[float, float, float]) -> str:
    mean, low, high = values
    return f"{mean:.3f} ({low:.3f}-{high:.3f})"


def _curve_text(curve: Curve) -> str:
    return ", ".join(f"{accuracy:.3f}@{t / 60:.1f}" for t, accuracy in curve)


def _settings_text() -> str:
    return ("`experiments/treepo_math.py` with " + " ".join(f"`{o}`" for o in COMMON)
            + f", lr {LR:g} (cosine decay to a tenth over the run)")


def sweep(args: argparse.Namespace) -> None:
    curves: dict[str, Curve] = {}
    steps = {arm: args.tree_steps if is_tree(arm) else args.steps for arm in ARMS}
    if args.keep and CHOICE_FILE.exists():
        # The arms run before with the same seed and length stay; only the others run.
        saved = json.loads(CHOICE_FILE.read_text())
        curves = {arm: [tuple(p) for p in curve] for arm, curve in saved["curves"].items()
                  if arm in ARMS and saved["seed"] == args.seed and saved["steps"].get(arm) == steps[arm]}
    with tempfile.TemporaryDirectory(prefix="zrl-sampling-ab-") as tmp:
        for arm in ARMS:
            if arm not in curves:
                curves[arm] = run_arm(arm, args.seed, "validation", steps[arm], Path(tmp))
    scores = {arm: mean_after_first_minute(curve, args.minutes) for arm, curve in curves.items()}
    chosen = {kind: best_setting({arm: [score] for arm, score in scores.items() if is_tree(arm) == (kind == "tree")})
              for kind in ("tree", "independent")}
    CHOICE_FILE.write_text(json.dumps({
        "split": "validation", "minutes": args.minutes, "steps": steps, "seed": args.seed,
        "measured": datetime.date.today().isoformat(), "chosen": chosen,
        "scores": {arm: round(score, 4) for arm, score in scores.items()}, "curves": curves}, indent=1) + "\n")
    rows = [[arm, " ".join(f"`{o}`" for o in ARMS[arm]), str(steps[arm]), f"{curves[arm][-1][0] / 60:.1f}",
             f"{scores[arm]:.3f}"] for arm in ARMS]
    body = (f"Sampling sweep on the **validation** split (200 problems), seed {args.seed}, one run per arm: "
            f"{args.steps} steps for independent samples, {args.tree_steps} for trees (they make more steps per "
            f"minute); {_settings_text()}. Score: mean greedy accuracy at minutes 1..{args.minutes:g} (a run that "
            "has ended keeps its last evaluation).\n\n"
            + markdown_table(["arm", "overrides", "steps", "minutes", "score"], rows)
            + f"\n\nChosen: trees `{chosen['tree']}`, independent `{chosen['independent']}` (in "
            "`benchmarks/sampling_ab_choice.json`, read by the report).\n\nCurves (accuracy@minute):\n\n"
            + "\n".join(f"- {arm}: {_curve_text(curve)}" for arm, curve in curves.items()) + "\n")
    print(body)
    if not args.no_doc:
        update_section("sampling_ab_sweep", "Trees or independent samples: the sweep (validation)",
                       "make bench-sampling-sweep", body)


def report(args: argparse.Namespace) -> None:
    if not CHOICE_FILE.exists():
        raise SystemExit(f"no {CHOICE_FILE.name}: run `make bench-sampling-sweep` first, to choose the "
                         "arms on the validation split")
    choice = json.loads(CHOICE_FILE.read_text())
    arms = choice["chosen"]
    # Equal wall-clock: each arm runs as many steps as it made in the time the slower arm took in the sweep (a
    # curve's last evaluation is the run's end), its learning-rate schedule stretched over them.
    seconds = {kind: choice["curves"][arm][-1][0] for kind, arm in arms.items()}
    steps = {kind: round(choice["steps"][arm] * max(seconds.values()) / seconds[kind]) for kind, arm in arms.items()}
    runs: dict[str, list[Curve]] = {kind: [] for kind in arms}
    with tempfile.TemporaryDirectory(prefix="zrl-sampling-ab-") as tmp:
        for seed in args.seeds:
            for kind, arm in arms.items():
                runs[kind].append(run_arm(arm, seed, "heldout", steps[kind], Path(tmp)))
    RUNS_FILE.write_text(json.dumps({
        "split": "heldout", "minutes": args.minutes, "seeds": args.seeds, "steps": steps, "arms": arms,
        "chosen_on": choice["measured"], "measured": datetime.date.today().isoformat(), "curves": runs}) + "\n")
    render(json.loads(RUNS_FILE.read_text()), args.no_doc)


def render(saved: dict, no_doc: bool) -> None:
    """The report's table and verdict from the saved curves (`benchmarks/sampling_ab_runs.json`)."""
    runs = {kind: [[tuple(point) for point in curve] for curve in curves] for kind, curves in saved["curves"].items()}
    minutes, seeds, arms = saved["minutes"], saved["seeds"], saved["arms"]
    rows, at_least = [], []
    for minute in minutes_grid(minutes):
        at = {kind: spread([accuracy_at(curve, 60.0 * minute) for curve in runs[kind]]) for kind in runs}
        lead = at["tree"][0] - at["independent"][0]
        if minute > 2:
            at_least.append(lead >= 0)
        rows.append([str(minute), _fmt(at["tree"]), _fmt(at["independent"]), f"{lead * 100:+.1f}"])
    ends = {kind: [curve[-1][0] / 60 for curve in runs[kind]] for kind in runs}
    body = (f"Greedy accuracy on the **held-out test** split (200 problems) against minutes of training, "
            f"{len(seeds)} seeds per arm ({', '.join(map(str, seeds))}): mean (lowest-highest). {_settings_text()}; "
            f"trees {saved['steps']['tree']} steps, independent {saved['steps']['independent']} (the steps each made in "
            f"the same time in the sweep: equal wall-clock); trees: `{arms['tree']}` ({' '.join(ARMS[arms['tree']])}), "
            "independent: "
            f"`{arms['independent']}` ({' '.join(ARMS[arms['independent']])}), each the best of its kind on the "
            f"validation split (section below, {saved['chosen_on']}).\n\n"
            + markdown_table(["minute", "trees", "independent", "trees - independent (points)"], rows)
            + f"\n\n- Trees at least as good as independent samples (means) at every minute after the first two: "
            f"**{'yes' if all(at_least) else 'no'}**"
            + "\n- Runs ended (minutes of training): "
            + "; ".join(f"{kind} " + ", ".join(f"{m:.1f}" for m in ends[kind]) for kind in runs)
            + " (a run that has ended keeps its last evaluation)\n\nCurves (accuracy@minute; exact times in "
            "`benchmarks/sampling_ab_runs.json`):\n\n"
            + "\n".join(f"- {kind} seed {seed}: {_curve_text(curve)}"
                        for kind in runs for seed, curve in zip(seeds, runs[kind], strict=True)) + "\n")
    print(body)
    if not no_doc:
        update_section("sampling_ab", "Trees or independent samples: learning on the long task (test set)",
                       "make bench-sampling", body, measured=saved["measured"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("sweep", "report", "render"))
    parser.add_argument("--minutes", type=float, default=5.0, help="minutes of training over which curves are compared")
    parser.add_argument("--steps", type=int, default=400, help="sweep: the run length of an independent arm, in steps")
    parser.add_argument("--tree-steps", type=int, default=600, help="sweep: the run length of a tree arm, in steps")
    parser.add_argument("--seed", type=int, default=0, help="sweep: the seed of every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="report: seeds per arm (>= 3)")
    parser.add_argument("--keep", action="store_true",
                        help="sweep: keep the arms of benchmarks/sampling_ab_choice.json (same seed and steps) and "
                             "run only the others")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    if args.mode == "render":
        render(json.loads(RUNS_FILE.read_text()), args.no_doc)
    elif args.mode == "sweep":
        sweep(args)
    else:
        if len(args.seeds) < 3:
            sys.exit("report: give at least 3 seeds")
        report(args)


if __name__ == "__main__":
    main()
