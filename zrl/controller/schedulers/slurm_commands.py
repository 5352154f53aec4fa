"""The Slurm client commands the slurm scheduler and `--submit` share: run one, submit a script.

Every command runs with a timeout and turns a missing tool, a hang or a failure into a `SlurmError` that says
what to do about it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

COMMAND_TIMEOUT_S = 60.0


class SlurmError(RuntimeError):
    """A Slurm command is missing, failed or did not answer."""


def sbatch(script_path: Path) -> str:
    """Submit `script_path` with `sbatch --parsable`; returns the job id."""
    output = run(["sbatch", "--parsable", str(script_path)], "submit")
    job_id = output.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch --parsable {script_path} printed {output.strip()!r}, not a job id")
    return job_id


def run(argv: list[str], purpose: str, ok_errors: tuple[str, ...] = ()) -> str:
    """Run a Slurm client command and return its stdout; errors whose stderr holds one of `ok_errors` are ''."""
    if shutil.which(argv[0]) is None:
        error = FileNotFoundError(argv[0])
        raise SlurmError(
            f"'{argv[0]}' is not on PATH ({os.environ.get('PATH', '')}), so the slurm scheduler cannot {purpose}: "
            "install the Slurm client tools (Debian/Ubuntu: apt-get install slurm-client) or add their directory "
            "to PATH; for a single-node test cluster run `scripts/slurm-dev-cluster.sh up` as root and export the "
            "SLURM_CONF it prints") from error
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as error:
        raise SlurmError(f"`{' '.join(argv)}` did not answer within {COMMAND_TIMEOUT_S:.0f} s; is slurmctld up "
                         f"(SLURM_CONF={os.environ.get('SLURM_CONF', '<unset>')})?") from error
    if result.returncode != 0:
        if any(text in result.stderr for text in ok_errors):
            return result.stdout
        hint = ("; the Slurm client finds no cluster: export SLURM_CONF=/path/to/slurm.conf (for the single-node "
                "test cluster, the line `scripts/slurm-dev-cluster.sh up` prints)"
                if "configuration source" in result.stderr else "")
        raise SlurmError(f"`{' '.join(argv)}` failed with exit code {result.returncode}: {result.stderr.strip()}{hint}")
    return result.stdout
