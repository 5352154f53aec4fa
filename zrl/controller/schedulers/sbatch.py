"""Renders the sbatch script that runs one worker group (or one relaunched worker) as a Slurm job.

Layout of a job: the allocation holds one task per worker (`--ntasks`, `--cpus-per-task`, `--mem-per-cpu`,
`--gpus-per-task`), and the batch script starts one `srun --exact` step per worker, named `{group}.{index}`, with
the worker's own log file and environment. A small shell wrapper writes each worker's exit code to
`{state_dir}/exit/{group}.{index}.{job id}.{restart}` the moment that worker ends, so the controller knows which
worker of a group failed, and with which code, while the others still run. `{restart}` is Slurm's
SLURM_RESTART_COUNT (0 until Slurm requeues the job), so the record of a run before a requeue is not read as the
end of the run after it.

Environment: the batch script gets the submitting environment (`--export=ALL`, Slurm's default), and each step
gets that plus the worker's `WorkerLaunch.env`, exported explicitly in a subshell around its step (values may
hold commas, which `--export=NAME=value` cannot carry, and secrets such as a Redis password stay out of every
process's argv; the script file itself is written readable by its owner only).
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Sequence
from pathlib import Path

from zrl.controller.schedulers.base import Resources, SlurmOptions, SlurmPlacement, WorkerLaunch

_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def safe_name(text: str) -> str:
    """`text` with every run of characters outside [A-Za-z0-9._-] replaced by '_' (job, step and file names)."""
    return _UNSAFE_NAME_CHARS.sub("_", text).strip("_") or "_"


def step_name(launch: WorkerLaunch) -> str:
    """The Slurm step name (and exit-file stem) of one worker."""
    return f"{safe_name(launch.group)}.{launch.index}"


def exit_file(state_dir: Path, launch: WorkerLaunch, job_id: str, restart: int = 0) -> Path:
    """Where the job's wrapper writes the worker's exit code, in the job's `restart`-th run (Slurm requeues)."""
    return state_dir / "exit" / f"{step_name(launch)}.{job_id}.{restart}"


def stop_file(state_dir: Path, launch: WorkerLaunch, job_id: str) -> Path:
    """A marker that keeps a worker's step from starting (its job was still pending when the worker was stopped)."""
    return state_dir / "exit" / f"{step_name(launch)}.{job_id}.stop"


def job_name(run_dir: Path, group: str, index: int | None = None) -> str:
    """`zrl-{experiment}-{trial}-{group}` for a group, with `-{index}` appended for a single relaunched worker.

    The run directory is `runs/{experiment}/{trial}`, so its last two components name the experiment and trial.
    """
    parts = ["zrl", run_dir.parent.name, run_dir.name, group] + ([] if index is None else [str(index)])
    return "-".join(safe_name(part) for part in parts)


def validate_launches(launches: Sequence[WorkerLaunch]) -> None:
    """Raise ValueError naming the worker and field when the launches cannot form one job."""
    if not launches:
        raise ValueError("no workers to launch: a Slurm job needs at least one WorkerLaunch")
    groups = {launch.group for launch in launches}
    if len(groups) != 1:
        raise ValueError(f"one Slurm job runs one worker group, got groups {sorted(groups)}")
    seen: set[int] = set()
    for launch in launches:
        where = f"worker {launch.worker_id}"
        if launch.index in seen:
            raise ValueError(f"{where} appears twice in one submission")
        seen.add(launch.index)
        if not launch.argv:
            raise ValueError(f"{where}: argv is empty")
        for name, value in launch.env.items():
            if not _ENV_NAME.match(name):
                raise ValueError(f"{where}: env name {name!r} is not a valid environment variable name")
            if "\0" in value:
                raise ValueError(f"{where}: env {name} holds a NUL byte")
        res = launch.resources
        if res.cpus < 1 or res.memory_mb < 1 or res.gpus < 0:
            raise ValueError(f"{where}: resources must have cpus >= 1, memory_mb >= 1, gpus >= 0, got {res}")
        problems = placement_errors(launch.slurm)
        if problems:
            raise ValueError(f"{where}: slurm placement: {'; '.join(problems)}")
    if len({launch.slurm for launch in launches}) > 1:
        raise ValueError(f"the workers of group {launches[0].group} have different slurm placements; one job has one")


def placement_errors(placement: SlurmPlacement) -> list[str]:
    """Every problem of a group's Slurm placement, each as 'field: problem'."""
    errors = []
    for field_name in ("nodelist", "exclude", "constraint", "gres"):
        value = getattr(placement, field_name)
        if any(ch.isspace() for ch in value):
            errors.append(f"{field_name}: {value!r} may not contain whitespace")
    if placement.ntasks_per_node < 0:
        errors.append(f"ntasks_per_node: must be >= 0 (0: Slurm's choice), got {placement.ntasks_per_node}")
    errors += [f"extra_sbatch_lines: entry {line!r} spans several lines; give one per entry"
               for line in placement.extra_sbatch_lines if "\n" in line or "\r" in line]
    return errors


def _placement_header(placement: SlurmPlacement) -> list[str]:
    flags = [f"--{name}={value}" for name, value in (
        ("nodelist", placement.nodelist), ("exclude", placement.exclude), ("constraint", placement.constraint),
        ("gres", placement.gres), ("ntasks-per-node", placement.ntasks_per_node or "")) if value]
    if placement.exclusive:
        flags.append("--exclusive")
    return [f"#SBATCH {flag}" for flag in flags] + list(placement.extra_sbatch_lines)


def validate_options(options: SlurmOptions) -> None:
    """Raise ValueError naming the option when the Slurm options cannot be rendered into a script."""
    for field_name in ("partition", "time_limit", "account", "container_image", "container_mounts"):
        value = getattr(options, field_name)
        if any(ch.isspace() for ch in value):
            raise ValueError(f"slurm option {field_name}={value!r} may not contain whitespace")
    for line in options.extra_sbatch_lines:
        if "\n" in line or "\r" in line:
            raise ValueError(f"slurm option extra_sbatch_lines entry {line!r} spans several lines; give one per entry")
    if options.container_mounts and not options.container_image:
        raise ValueError("slurm option container_mounts is set but container_image is empty")
    if options.poll_interval_s < 0:
        raise ValueError(f"slurm option poll_interval_s must be >= 0, got {options.poll_interval_s}")


def _mem_per_cpu_mb(launch: WorkerLaunch) -> int:
    return math.ceil(launch.resources.memory_mb / launch.resources.cpus)


def _resource_flags(cpus: int, mem_per_cpu_mb: int, gpus: int) -> list[str]:
    flags = [f"--cpus-per-task={cpus}", f"--mem-per-cpu={mem_per_cpu_mb}M"]
    if gpus:
        flags.append(f"--gpus-per-task={gpus}")
    return flags


def _step_command(launch: WorkerLaunch, options: SlurmOptions, cwd: Path) -> list[str]:
    res = launch.resources
    command = ["srun", "--exact", "--ntasks=1", "--nodes=1", *_resource_flags(res.cpus, _mem_per_cpu_mb(launch), res.gpus),
               f"--job-name={step_name(launch)}", f"--output={(cwd / launch.log_path).resolve()}",
               "--open-mode=append", "--export=ALL"]
    if options.container_image:
        command.append(f"--container-image={options.container_image}")
        if options.container_mounts:
            command.append(f"--container-mounts={options.container_mounts}")
    return command + ["--", *launch.argv]


_WRAPPER = """\
# Runs one worker's step (unless the controller stopped it first: 143, as for SIGTERM) and records its exit
# code atomically the moment it ends.
zrl_worker() {
  local stop_file=$1.stop exit_file=$1.${SLURM_RESTART_COUNT:-0} rc=143
  shift
  if [ ! -e "$stop_file" ]; then
    "$@"
    rc=$?
  fi
  printf '%d\\n' "$rc" >"$exit_file.tmp" && mv -f "$exit_file.tmp" "$exit_file"
  return "$rc"
}
"""

_WAIT_ALL = """\
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || { rc=$?; [ "$status" -ne 0 ] || status=$rc; }
done
exit "$status"
"""


def _common_header(name: str, options: SlurmOptions, output: Path, cwd: Path) -> list[str]:
    header = [f"#SBATCH --output={output}", f"#SBATCH --chdir={cwd}", "#SBATCH --export=ALL"]
    if options.partition:
        header.append(f"#SBATCH --partition={options.partition}")
    if options.time_limit:
        header.append(f"#SBATCH --time={options.time_limit}")
    if options.account:
        header.append(f"#SBATCH --account={options.account}")
    return header + list(options.extra_sbatch_lines)


def render_controller_script(argv: Sequence[str], options: SlurmOptions, *, name: str, output: Path, cwd: Path,
                             resources: Resources) -> str:
    """The sbatch script that runs the controller itself (on the host, not in a container: it calls sbatch)."""
    if not argv:
        raise ValueError("the controller command line is empty")
    validate_options(options)
    header = ["#!/bin/bash", f"#SBATCH --job-name={name}", "#SBATCH --ntasks=1",
              *(f"#SBATCH {flag}" for flag in _resource_flags(resources.cpus, math.ceil(resources.memory_mb / resources.cpus),
                                                             resources.gpus)),
              *_common_header(name, options, output, cwd)]
    return "\n".join(header + ["", f"exec {shlex.join(argv)}", ""])


def render_script(launches: Sequence[WorkerLaunch], options: SlurmOptions, *, name: str, state_dir: Path,
                  cwd: Path) -> str:
    """The sbatch script text for `launches` (one group), with absolute paths resolved against `cwd`."""
    validate_launches(launches)
    validate_options(options)
    state_dir = (cwd / state_dir).resolve()
    header = [
        "#!/bin/bash",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --ntasks={len(launches)}",
        *(f"#SBATCH {flag}" for flag in _resource_flags(
            max(launch.resources.cpus for launch in launches),
            max(_mem_per_cpu_mb(launch) for launch in launches),
            max(launch.resources.gpus for launch in launches))),
        *_common_header(name, options, state_dir / f"{name}-%j.out", cwd),
        *_placement_header(launches[0].slurm),
    ]
    body = [
        "set -u",
        f"exit_dir={shlex.quote(str(state_dir / 'exit'))}",
        'mkdir -p "$exit_dir"',
        _WRAPPER,
        "pids=()",
    ]
    for launch in sorted(launches, key=lambda item: item.index):
        target = f'"$exit_dir/{step_name(launch)}.$SLURM_JOB_ID"'
        exports = " ".join(f"{name}={shlex.quote(value)}" for name, value in sorted(launch.env.items()))
        body.append("(")
        if exports:
            body.append(f"  export {exports}")
        body.append(f"  zrl_worker {target} {shlex.join(_step_command(launch, options, cwd))}")
        body.append(") &")
        body.append("pids+=($!)")
    body.append(_WAIT_ALL)
    return "\n".join(header + [""] + body)
