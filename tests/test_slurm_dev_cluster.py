"""scripts/slurm-dev-cluster.sh, run as root, refuses a ROOT that another user could have planted or can change."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "slurm-dev-cluster.sh"
NOBODY = 65534


@pytest.fixture(autouse=True)
def as_root():
    require(os.geteuid() == 0, "the script's ownership checks matter when it runs as root")


def cluster_script(action: str, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), action, str(root)], capture_output=True, text=True, timeout=60)


def planted_root(tmp_path: Path, victim_pid: int) -> Path:
    """A cluster directory made by another user, whose pid file names a process that is not theirs."""
    root = tmp_path / "planted"
    (root / "run").mkdir(parents=True)
    (root / "run" / "slurmd.pid").write_text(f"{victim_pid}\n")
    for path in (root, root / "run", root / "run" / "slurmd.pid"):
        os.chown(path, NOBODY, NOBODY)
    return root


def test_down_refuses_a_root_of_another_user_and_kills_nothing(tmp_path: Path):
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        result = cluster_script("down", planted_root(tmp_path, victim.pid))
        assert result.returncode != 0
        assert f"belongs to uid {NOBODY}" in result.stderr
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_up_does_not_follow_a_planted_link(tmp_path: Path):
    target = tmp_path / "theirs"
    target.mkdir()
    os.chown(target, NOBODY, NOBODY)
    link = tmp_path / "link"
    link.symlink_to(target)
    result = cluster_script("up", link)
    assert result.returncode != 0 and f"belongs to uid {NOBODY}" in result.stderr
    assert list(target.iterdir()) == []


def test_status_refuses_a_root_others_can_write(tmp_path: Path):
    root = tmp_path / "open"
    root.mkdir()
    os.chmod(root, 0o777)
    result = cluster_script("status", root)
    assert result.returncode != 0 and "writable by others (mode 777)" in result.stderr


def test_a_private_root_under_a_sticky_directory_is_taken(tmp_path: Path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    result = cluster_script("status", shared / "cluster")
    assert result.returncode == 1 and "no cluster under" in result.stdout and "refusing" not in result.stderr
    root = shared / "cluster"
    root.mkdir(mode=0o755)
    result = cluster_script("status", root)
    assert "munged: stopped" in result.stdout and "refusing" not in result.stderr
