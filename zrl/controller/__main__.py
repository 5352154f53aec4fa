"""Run an experiment: launch its workers, drive them to the end, exit 0 only on success.

    python -m zrl.controller experiments/treepo_math.py      # TreePO on the tiny built-in model, CPU only
    python -m zrl.controller experiments/treepo_math.py total_steps=100 lr=1e-5 engine=vllm
    python -m zrl.controller experiments/echo.py workers.producer.count=4 name_resolve=redis://127.0.0.1:6379/0
    python -m zrl.controller experiments/treepo_math.py --dry-run
    python -m zrl.controller experiments/treepo_math.py trial=try1 --resume   # continue a trial from its checkpoint
    python -m zrl.controller experiments/treepo_math.py scheduler=slurm --submit   # the controller in a Slurm job
    python -m zrl.controller experiments/treepo_math.py --help      # every key of that experiment, documented
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from types import FrameType

from zrl.config import ExperimentConfig, to_plain
from zrl.controller.experiment_file import load_experiment
from zrl.controller.help import config_help
from zrl.controller.overrides import ConfigError, apply_overrides
from zrl.controller.plan import RunPaths, launch_plan, name_resolve_url, with_name_service_password
from zrl.controller.validate import complete, group_levels, validate
from zrl.redact import redact_plain, redact_text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m zrl.controller", add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__)
    parser.add_argument("experiment_file", nargs="?", help="experiment file (Python that builds an ExperimentConfig)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override a config key by its dotted path, e.g. workers.producer.count=4")
    parser.add_argument("--resume", action="store_true",
                        help="continue the trial named by trial=NAME from its last checkpoint (the same as "
                             "resume=auto)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved config and the launch plan, start nothing, and exit")
    parser.add_argument("--submit", action="store_true",
                        help="run this controller inside a Slurm job (sbatch with the slurm.* options): print its "
                             "job id and log file, and exit")
    parser.add_argument("-h", "--help", action="store_true",
                        help="show this help and every config key (of EXPERIMENT_FILE when given)")
    return parser


def resolve_config(experiment_file: str, overrides: list[str]) -> ExperimentConfig:
    """Load, complete, override and validate: the config a run uses. Raises ConfigError listing every problem."""
    config = complete(load_experiment(experiment_file), name_trial=False)  # an override may name it, or resume
    config = complete(apply_overrides(config, overrides))
    validate(config)
    return config


def dry_run_text(config: ExperimentConfig) -> str:
    """The resolved config and the launch plan, every password in them masked."""
    from zrl.controller.schedulers import make_scheduler

    paths = RunPaths.for_config(config)
    scheduler = make_scheduler(config.scheduler, paths.root, config.slurm, config.ray)
    order = " -> ".join("+".join(level) for level in group_levels(config))
    return redact_text(f"resolved config:\n{json.dumps(redact_plain(to_plain(config)), indent=2)}\n\n"
                       f"run directory: {paths.root}\nname service: {name_resolve_url(config, paths)}\n"
                       f"configure/start order: {order}\nlaunch plan ({config.scheduler} scheduler):\n"
                       f"{scheduler.describe(launch_plan(config, paths))}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if args.help or not args.experiment_file:
        parser.print_help()
        config = None
        if args.experiment_file:
            try:
                config = complete(load_experiment(args.experiment_file))
            except Exception as exc:  # noqa: BLE001 - help still shows the generic keys
                print(f"\n(cannot load {args.experiment_file}: {exc})")
        print("\n" + config_help(config))
        return 0 if args.help else 2
    overrides = [*args.overrides, "resume=auto"] if args.resume else args.overrides
    try:
        config = resolve_config(args.experiment_file, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ImportError, AttributeError, TypeError, ValueError) as exc:
        print(f"error: cannot load experiment {args.experiment_file}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(dry_run_text(config))
        return 0
    refusal = placement_refusal(config)
    if refusal is not None:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    if args.submit:
        return submit_controller_job(args.experiment_file, overrides, config)
    try:
        config = with_name_service_password(config, os.environ)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run(config)


def placement_refusal(config: ExperimentConfig) -> str | None:
    """Why the workers could not be placed, before anything starts, or None: Slurm is asked whether workers could
    reach each other at `worker_host`; a Ray cluster must answer at `ray.address`."""
    if config.scheduler == "ray":
        from zrl.controller.schedulers.ray_cluster import RayUnavailable, connect

        try:
            connect(config.ray)
        except RayUnavailable as exc:
            return str(exc)
        return None
    if config.scheduler != "slurm":
        return None
    from zrl.controller.submit import SlurmError, check_worker_host

    try:
        check_worker_host(config.worker_host, config.slurm)
    except SlurmError as exc:
        return str(exc)
    return None


def submit_controller_job(experiment_file: str, overrides: list[str], config: ExperimentConfig) -> int:
    """Submit this command line (without --submit, with the resolved trial) as a Slurm job."""
    from pathlib import Path

    from zrl.controller.submit import SlurmError, submit_controller

    argv = [sys.executable, "-m", "zrl.controller", str(Path(experiment_file).resolve()), *overrides,
            f"trial={config.trial}"]
    try:
        job_id, log_path = submit_controller(argv, config.slurm, RunPaths.for_config(config).root)
    except SlurmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"submitted controller job {job_id}; log: {log_path}")
    return 0


def run(config: ExperimentConfig) -> int:
    import logging

    from zrl.controller.runner import Controller
    from zrl.controller.schedulers import make_scheduler
    from zrl.nameresolve import make_name_resolver

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = RunPaths.for_config(config)
    paths.create()
    resolver = make_name_resolver(name_resolve_url(config, paths))

    def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal or ssh session went away
        signal.signal(signum, on_sigterm)
    # A process started in the background by a shell without job control inherits SIGINT ignored, and Python keeps
    # it so: then `kill -INT` would not stop the trial. Ctrl-C and SIGINT always mean "stop every worker".
    signal.signal(signal.SIGINT, signal.default_int_handler)
    verb = "resuming" if config.resume == "auto" else "running"
    print(f"{verb} {config.experiment}/{config.trial} in {paths.root}", flush=True)
    try:
        scheduler = make_scheduler(config.scheduler, paths.root, config.slurm, config.ray)
        return Controller(config, scheduler, resolver).run()
    finally:
        resolver.close()


if __name__ == "__main__":
    sys.exit(main())
