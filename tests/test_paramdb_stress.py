"""One writer pushes 50 versions (with gc) while 4 reader processes read `latest` in a loop."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from zrl.paramdb import ParamDB

READERS = 4
VERSIONS = 50
NAMES = [f"layer{i}.weight" for i in range(4)]

READER = r"""
import json, sys, time
from pathlib import Path
import torch
from zrl.paramdb import ParamDB

root, stop, ready = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
names = json.loads(sys.argv[4])
db = ParamDB(root, "exp", "stress")
seen, reads, last = [], 0, -1

def read_once():
    global reads, last
    loaded = db.fetch("policy", "latest")
    state = loaded.state_dict
    if sorted(state) != sorted(names):
        raise AssertionError(f"version {loaded.version} has tensors {sorted(state)}")
    for name in names:
        if not torch.all(state[name] == float(loaded.version)):
            raise AssertionError(f"version {loaded.version} tensor {name} holds another version's values")
    if loaded.version < last:
        raise AssertionError(f"version went backwards: {last} then {loaded.version}")
    if loaded.metadata != {"step": loaded.version * 10}:
        raise AssertionError(f"version {loaded.version} has metadata {loaded.metadata}")
    last = loaded.version
    reads += 1
    if not seen or seen[-1] != loaded.version:
        seen.append(loaded.version)

db.wait_newer("policy", None, timeout=60)
ready.touch()
while not stop.exists():
    read_once()
    time.sleep(0.005)  # leave the shared cores some room for the writer
read_once()
print(json.dumps({"reads": reads, "seen": seen}))
"""


def state_for(version: int) -> dict[str, torch.Tensor]:
    return {name: torch.full((64, 256), float(version)) for name in NAMES}


def test_readers_only_ever_see_complete_versions_in_order(tmp_path: Path) -> None:
    db = ParamDB(tmp_path / "params", "exp", "stress")
    db.push("policy", state_for(0), 0, metadata={"step": 0})
    stop = tmp_path / "stop"
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(db.root), str(stop), str(tmp_path / f"ready{i}"),
                                 json.dumps(NAMES)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(READERS)]
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready{i}").exists() for i in range(READERS)):
            assert time.monotonic() < deadline, "reader processes did not start within 60 s"
            assert all(r.poll() is None for r in readers), [r.communicate() for r in readers if r.poll() is not None]
            time.sleep(0.05)
        for version in range(1, VERSIONS + 1):
            db.push("policy", state_for(version), version, metadata={"step": version * 10})
            db.gc("policy", keep_last=3)
        stop.touch()
        results = []
        for reader in readers:
            out, err = reader.communicate(timeout=60)
            assert reader.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for reader in readers:
            if reader.poll() is None:
                reader.kill()
                reader.wait()
    for result in results:
        assert result["seen"] == sorted(result["seen"])
        assert result["seen"][-1] == VERSIONS  # the read after the last push sees it
        assert result["reads"] >= 2
    assert len({v for result in results for v in result["seen"]}) > 3  # reads really overlapped the pushes
    assert db.list_versions("policy") == [VERSIONS - 2, VERSIONS - 1, VERSIONS]
