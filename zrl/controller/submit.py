"""`--submit` and the checks of the worker host before anything goes to Slurm.

`submit_controller` runs the controller itself as a Slurm job; `check_worker_host` refuses a `worker_host` that
workers placed on different nodes of the partition could not reach each other at.
"""

from __future__ import annotations

from pathlib import Path

from zrl.config import Resources, SlurmOptions
from zrl.controller.plan import make_private_dir
from zrl.controller.schedulers.processes import write_private
from zrl.controller.schedulers.sbatch import job_name, render_controller_script
from zrl.controller.schedulers.slurm_commands import SlurmError, run, sbatch
from zrl.hosts import is_loopback

__all__ = ["SlurmError", "check_worker_host", "loopback_refusal", "partition_nodes", "submit_controller"]


def loopback_refusal(worker_host: str, partition: str, nodes: list[str]) -> str | None:
    """Why `worker_host` cannot work on a partition of `nodes`, or None: a loopback address serves one node only."""
    if not is_loopback(worker_host) or len(nodes) <= 1:
        return None
    shown = ", ".join(nodes[:4]) + (", ..." if len(nodes) > 4 else "")
    return (f"worker_host={worker_host} is a loopback address, but Slurm partition {partition or '(the default)'} "
            f"has {len(nodes)} nodes ({shown}): workers placed on different nodes could not reach each other; set "
            "worker_host=auto (each node's own address) or an address that every node reaches")


def partition_nodes(partition: str) -> list[str]:
    """Names of the nodes of `partition` (empty: the cluster's default partition), as sinfo lists them."""
    nodes = set()
    for line in run(["sinfo", "-h", "-N", "-o", "%N|%P"], "list the nodes").splitlines():
        node, _, listed = line.partition("|")
        listed = listed.strip()
        if listed.rstrip("*") == partition if partition else listed.endswith("*"):
            nodes.add(node.strip())
    return sorted(nodes)


def check_worker_host(worker_host: str, options: SlurmOptions) -> None:
    """Raise SlurmError when workers on `options.partition` could not reach each other at `worker_host`."""
    if is_loopback(worker_host):
        refusal = loopback_refusal(worker_host, options.partition, partition_nodes(options.partition))
        if refusal is not None:
            raise SlurmError(refusal)


def submit_controller(argv: list[str], options: SlurmOptions, run_dir: Path, *, cwd: Path | None = None,
                      resources: Resources | None = None) -> tuple[str, Path]:
    """Submit a job that runs the controller command `argv`; returns the job id and the controller's log file."""
    cwd = (cwd or Path.cwd()).resolve()
    run_dir = (cwd / run_dir).resolve()
    name = job_name(run_dir, "controller")
    script = render_controller_script(argv, options, name=name, output=run_dir / "controller-%j.log", cwd=cwd,
                                      resources=resources or Resources())
    make_private_dir(run_dir)
    script_path = run_dir / f"{name}.sbatch"
    write_private(script_path, script)
    job_id = sbatch(script_path)
    return job_id, run_dir / f"controller-{job_id}.log"
