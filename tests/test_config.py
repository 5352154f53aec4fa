"""Experiment config: overrides by dotted path, whole-config validation, help text, plain round trip."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from zrl.config import ExperimentConfig, SlurmPlacement, WorkerGroupConfig, from_plain, to_plain
from zrl.controller.experiment_file import load_experiment
from zrl.controller.help import config_help, field_docs
from zrl.controller.overrides import ConfigError, apply_overrides
from zrl.controller.validate import complete, group_levels, validate
from zrl.workers.echo import EchoConsumerConfig, EchoProducerConfig, EchoServerConfig


def echo_config(**changes) -> ExperimentConfig:
    config = ExperimentConfig(
        experiment="echo", trial="t1", done_when=("consumer",),
        workers={
            "server": WorkerGroupConfig(type="echo_server", config=EchoServerConfig()),
            "consumer": WorkerGroupConfig(type="echo_consumer"),
            "producer": WorkerGroupConfig(type="echo_producer", count=2, after=("server", "consumer"),
                                          config=EchoProducerConfig()),
        })
    return complete(dataclasses.replace(config, **changes))


def test_overrides_set_typed_values_at_every_depth():
    config = apply_overrides(echo_config(), [
        "workers.producer.count=4", "workers.producer.config.interval_s=0.5", "scheduler=slurm",
        "workers.producer.restart=on_failure", "done_when=[consumer,producer]", "slurm.extra_sbatch_lines=",
        "workers.server.resources.gpus=1", "timeouts.lost_after_s=2", "trial=abc"])
    assert config.workers["producer"].count == 4
    assert config.workers["producer"].config.interval_s == 0.5
    assert isinstance(config.workers["producer"].config, EchoProducerConfig)
    assert config.scheduler == "slurm" and config.workers["producer"].restart == "on_failure"
    assert config.done_when == ("consumer", "producer") and config.slurm.extra_sbatch_lines == ()
    assert config.workers["server"].resources.gpus == 1 and config.timeouts.lost_after_s == 2.0
    assert config.trial == "abc"
    assert echo_config().workers["producer"].count == 2  # the original is untouched (frozen)


def test_a_group_without_config_gets_its_type_defaults():
    assert echo_config().workers["consumer"].config == EchoConsumerConfig()


def test_every_bad_override_is_reported_at_once_naming_its_key():
    with pytest.raises(ConfigError) as info:
        apply_overrides(echo_config(), [
            "workers.nonexistent=3", "workers.producer.count=abc", "scheduler=kubernetes",
            "workers.producer.config.nope=1", "timeouts", "workers.producer.resources=3",
            "workers.producer.config.interval_s=fast"])
    errors = info.value.errors
    assert len(errors) == 7
    assert errors[0].startswith("workers.nonexistent: unknown key; allowed: consumer, producer, server")
    assert errors[1] == "workers.producer.count: expected an int, got 'abc'"
    assert errors[2] == "scheduler: 'kubernetes' is not allowed; allowed values: local, slurm, ray"
    assert errors[3].startswith("workers.producer.config.nope: unknown key; allowed: inference_stream")
    assert "key=value" in errors[4]
    assert errors[5].startswith("workers.producer.resources: is a section; set one of its keys: cpus, memory_mb")
    assert errors[6] == "workers.producer.config.interval_s: expected a float, got 'fast'"
    assert "workers.nonexistent" in str(info.value)


def test_validation_reports_every_problem_with_its_key():
    config = echo_config(experiment="", done_when=("trainer",), worker_host="0.0.0.0", workers={
        "a": WorkerGroupConfig(type="no_such_type", count=0,
                               slurm=SlurmPlacement(constraint="a100 ib", ntasks_per_node=-1)),
        "b": WorkerGroupConfig(type="echo_server", config=EchoConsumerConfig(), after=("ghost",),
                               max_restarts=-1, max_failed=1,
                               resources=dataclasses.replace(WorkerGroupConfig().resources, cpus=0)),
    })
    with pytest.raises(ConfigError) as info:
        validate(config)
    text = "\n".join(info.value.errors)
    for expected in ("experiment: experiment must not be empty", "workers.a.type: unknown worker type 'no_such_type'",
                     "workers.a.count: must be >= 1", "workers.b.config: is a EchoConsumerConfig, but type "
                     "'echo_server' takes a EchoServerConfig", "workers.b.after[0]: 'ghost'",
                     "workers.b.max_restarts: must be >= 0", "workers.b.resources.cpus: must be >= 1",
                     "workers.b.max_failed: must be >= 0 and below count (1)",
                     "done_when[0]: 'trainer' is not a worker group",
                     "worker_host: 0.0.0.0 is the wildcard address",
                     "workers.a.slurm.constraint: 'a100 ib' may not contain whitespace",
                     "workers.a.slurm.ntasks_per_node: must be >= 0"):
        assert expected in text
    assert len(info.value.errors) == 12


def test_dependency_cycles_and_levels():
    assert group_levels(echo_config()) == [["server", "consumer"], ["producer"]]
    cyclic = echo_config(workers={"a": WorkerGroupConfig(type="echo_server", after=("b",)),
                                  "b": WorkerGroupConfig(type="echo_server", after=("a",))})
    with pytest.raises(ConfigError, match="cycle"):
        validate(cyclic)


def test_memory_name_service_is_rejected_for_worker_processes():
    with pytest.raises(ConfigError, match="name_resolve"):
        validate(echo_config(name_resolve="memory://x"))
    validate(echo_config(name_resolve="redis://127.0.0.1:6379/0"))


def test_trial_defaults_to_a_timestamp_and_two_runs_in_one_second_get_different_trials():
    first, second = (complete(dataclasses.replace(echo_config(), trial=""), clock=lambda: 0.0) for _ in range(2))
    assert first.trial[:15] == time.strftime("%Y%m%d-%H%M%S", time.localtime(0.0)) and first.trial[8] == "-"
    assert first.trial != second.trial


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_non_finite_numbers_are_refused_naming_the_key(value: str):
    with pytest.raises(ConfigError, match=rf"timeouts.lost_after_s: expected a finite number, got '{value}'"):
        apply_overrides(echo_config(), [f"timeouts.lost_after_s={value}"])
    timeouts = dataclasses.replace(echo_config().timeouts, stop_s=float(value))
    with pytest.raises(ConfigError, match="timeouts.stop_s: must be a finite number"):
        validate(dataclasses.replace(echo_config(), timeouts=timeouts))


def test_help_shows_every_field_docstring():
    docs = field_docs(WorkerGroupConfig)
    assert set(docs) == {f.name for f in dataclasses.fields(WorkerGroupConfig)}
    text = config_help(echo_config())
    assert "workers.producer.config.num_samples (int, default 200): Samples this producer posts" in text
    assert "timeouts.lost_after_s (float, default 5.0)" in text
    for cls in (ExperimentConfig, EchoProducerConfig, EchoConsumerConfig, EchoServerConfig):
        assert set(field_docs(cls)) == {f.name for f in dataclasses.fields(cls)}, cls


def test_plain_round_trip_and_unknown_keys():
    config = EchoProducerConfig(num_samples=7)
    assert from_plain(EchoProducerConfig, to_plain(config)) == config
    with pytest.raises(TypeError, match="where: unknown keys \\['bogus'\\]"):
        from_plain(EchoProducerConfig, {"bogus": 1}, "where")


def test_an_alias_sets_every_key_it_names_and_is_documented():
    config = echo_config(aliases={"interval": ("workers.producer.config.interval_s",),
                                  "poll": ("workers.server.config.poll_timeout_s",
                                           "workers.consumer.config.poll_timeout_s")})
    config = apply_overrides(config, ["poll=0.2", "interval=1.5"])
    assert config.workers["server"].config.poll_timeout_s == 0.2
    assert config.workers["consumer"].config.poll_timeout_s == 0.2
    assert config.workers["producer"].config.interval_s == 1.5
    with pytest.raises(ConfigError) as error:
        apply_overrides(config, ["poll=fast", "nosuch=1"])
    assert "poll (alias of workers.server.config.poll_timeout_s): workers.server.config.poll_timeout_s: " \
           "expected a float, got 'fast'" in str(error.value)
    assert "nosuch: unknown key" in str(error.value) and "aliases: interval, poll" in str(error.value)
    assert "poll -> workers.server.config.poll_timeout_s, workers.consumer.config.poll_timeout_s" in config_help(config)


def test_an_alias_to_a_missing_key_is_a_config_error():
    config = echo_config(aliases={"speed": ("workers.producer.config.speed", "workers.server.config")})
    with pytest.raises(ConfigError) as error:
        validate(config)
    assert "aliases.speed: 'workers.producer.config.speed' is not a key of this experiment" in str(error.value)
    assert "aliases.speed: 'workers.server.config' is not a key" in str(error.value)


def test_resume_needs_the_name_and_the_run_directory_of_the_trial(tmp_path, capsys):
    from zrl.controller.__main__ import main, resolve_config

    echo = "experiments/echo.py"
    with pytest.raises(ConfigError, match=r"resume: resume=auto continues an existing trial; name it with trial=NAME"):
        resolve_config(echo, ["resume=auto", f"run_root={tmp_path}"])
    with pytest.raises(ConfigError, match=rf"resume: there is no run directory {tmp_path}/echo/t7 to resume"):
        resolve_config(echo, ["trial=t7", "resume=auto", f"run_root={tmp_path}"])
    (tmp_path / "echo" / "t7").mkdir(parents=True)
    config = resolve_config(echo, ["trial=t7", "resume=auto", f"run_root={tmp_path}"])
    assert (config.trial, config.resume) == ("t7", "auto")
    # --resume is resume=auto; without a trial it stops before anything is launched.
    assert main([echo, "--resume", f"run_root={tmp_path}", "--dry-run"]) == 2
    assert "name it with trial=NAME" in capsys.readouterr().err
    assert main([echo, "trial=t7", "--resume", f"run_root={tmp_path}", "--dry-run"]) == 0
    # A new trial still gets a name of its own, also when the experiment file names none.
    assert resolve_config(echo, [f"run_root={tmp_path}"]).trial


def test_a_learning_rate_decay_is_checked_before_anything_starts():
    treepo = load_experiment(Path(__file__).resolve().parent.parent / "experiments" / "treepo_math.py")
    config = apply_overrides(treepo, ["lr_decay=cosine", "min_lr_ratio=0.2"]).workers["trainer"].config
    assert (config.optimizer.decay, config.optimizer.min_lr_ratio) == ("cosine", 0.2)
    # A run that ends inside the warm-up has nothing to decay: a short smoke run needs no other setting.
    assert apply_overrides(treepo, ["lr_decay=cosine", "total_steps=3"]).workers["trainer"].config.total_steps == 3
    with pytest.raises(ConfigError) as info:
        apply_overrides(treepo, ["lr_decay=step", "min_lr_ratio=2"])
    assert "'step' is not allowed; allowed values: constant, cosine, linear" in info.value.errors[0]
    assert "min_lr_ratio must be between 0 and 1, got 2.0" in info.value.errors[1]
    # The optimizer is one section of the trainer's config; the short keys set it.
    config = apply_overrides(treepo, ["lr=1e-4", "workers.trainer.config.optimizer.warmup_steps=0"]).workers["trainer"]
    assert (config.config.optimizer.lr, config.config.optimizer.warmup_steps) == (1e-4, 0)
    with pytest.raises(ConfigError, match="lr must be > 0, got -1.0"):
        apply_overrides(treepo, ["lr=-1"])
