"""A push publishes its version in the name service, and `wait_newer` learns of it from there within a second."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
import torch

from zrl.nameresolve import make_name_resolver, names
from zrl.paramdb import ParamDB, ParamDBConfig


def state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((128,), value)}


@pytest.fixture(params=["memory", "redis"])
def resolver_url(request) -> str:
    if request.param == "memory":
        return f"memory://paramdb-{uuid.uuid4().hex}"
    return request.getfixturevalue("redis_server").url


def test_push_publishes_version_and_reader_learns_it_without_disk(tmp_path: Path, resolver_url: str) -> None:
    writer_ns, reader_ns = make_name_resolver(resolver_url), make_name_resolver(resolver_url)
    try:
        writer = ParamDB(tmp_path, "exp", "t0", name_resolver=writer_ns)
        # The reader looks at the disk once at the start and then only at the name service.
        reader = ParamDB(tmp_path, "exp", "t0", name_resolver=reader_ns,
                         config=ParamDBConfig(disk_poll_interval=3600))
        key = names.param_version("exp", "t0", "policy")
        writer.push("policy", state(1.0), 1)
        assert reader_ns.get(key) == "1"
        pushed_at: list[float] = []

        def push_later() -> None:
            writer.push("policy", state(2.0), 2)
            pushed_at.append(time.monotonic())

        timer = threading.Timer(0.5, push_later)
        timer.start()
        try:
            assert reader.wait_newer("policy", 1, timeout=10) == 2
            returned_at = time.monotonic()
        finally:
            timer.join()
        assert returned_at - pushed_at[0] < 1.0
        assert torch.equal(reader.get("policy", 2)["w"], state(2.0)["w"])
        writer.push("policy", state(0.5), 0)  # an older version is not announced
        assert reader_ns.get(key) == "2"
    finally:
        writer_ns.close()
        reader_ns.close()
