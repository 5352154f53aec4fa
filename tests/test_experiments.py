"""Every shipped experiment file loads, validates, and dry-runs through the real entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from zrl.config import ExperimentConfig
from zrl.controller.__main__ import resolve_config
from zrl.controller.overrides import ConfigError

EXPERIMENTS = sorted((Path(__file__).resolve().parent.parent / "experiments").glob("*.py"))


def test_there_are_experiments():
    assert any(path.name == "echo.py" for path in EXPERIMENTS)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_validates_and_names_its_command(path: Path):
    config = resolve_config(str(path), [])
    assert isinstance(config, ExperimentConfig) and config.experiment
    first = path.read_text().splitlines()[0]
    assert first.startswith("# python -m zrl.controller experiments/") and path.name in first


def test_dry_run_prints_config_and_plan_and_starts_nothing(tmp_path: Path):
    echo = next(path for path in EXPERIMENTS if path.name == "echo.py")
    result = subprocess.run(
        [sys.executable, "-m", "zrl.controller", str(echo), "--dry-run", "trial=dry", f"run_root={tmp_path}",
         "workers.producer.count=3"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert '"count": 3' in result.stdout
    assert "configure/start order: server+consumer -> producer" in result.stdout
    assert result.stdout.count("-m zrl.workers echo_producer") == 3
    assert not (tmp_path / "echo").exists()


def test_help_lists_the_experiment_keys():
    echo = next(path for path in EXPERIMENTS if path.name == "echo.py")
    result = subprocess.run([sys.executable, "-m", "zrl.controller", str(echo), "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--dry-run" in result.stdout
    assert "workers.consumer.config.expected_samples (int, default 400): Distinct samples" in result.stdout
    assert "name_resolve (str, default ''): Name service URL" in result.stdout


def test_the_treepo_experiment_evaluates_on_validation_and_seeds_a_run_by_one_key():
    treepo = next(path for path in EXPERIMENTS if path.name == "treepo_math.py")
    default = resolve_config(str(treepo), [])
    assert default.workers["evaluator"].config.problems.split == "heldout"
    config = resolve_config(str(treepo), ["heldout.split=validation", "seed=3"])
    assert config.workers["evaluator"].config.problems.split == "validation"
    assert config.workers["trainer"].config.seed == 3
    assert config.workers["policy"].config.engine.seed == 3
    assert config.workers["rollout"].config.shuffle_seed == 3
    with pytest.raises(Exception, match="heldout.split"):
        resolve_config(str(treepo), ["heldout.split=test"])


def test_the_trainer_and_the_rollout_workers_cannot_disagree_on_staleness():
    treepo = next(path for path in EXPERIMENTS if path.name == "treepo_math.py")
    config = resolve_config(str(treepo), ["max_staleness=4", "prompts_per_step=3"])  # one key sets both groups
    assert config.workers["trainer"].config.staleness == config.workers["rollout"].config.staleness
    assert (config.workers["trainer"].config.max_staleness, config.workers["rollout"].config.prompts_per_step) == (4, 3)
    with pytest.raises(ConfigError) as info:
        resolve_config(str(treepo), ["workers.rollout.config.max_staleness=1"])
    assert info.value.errors == ["workers.trainer.config.max_staleness (2) and workers.rollout.config.max_staleness "
                                 "(1) must be equal"]
