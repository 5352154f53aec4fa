"""Parameter DB on a real filesystem: layout, round trips, from_pretrained, corruption, ENOSPC, tags and gc."""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from zrl.paramdb import (
    CorruptVersionError,
    InvalidNameError,
    ParamDB,
    ParamDBConfig,
    PushError,
    VersionExistsError,
    VersionNotFoundError,
)


def tiny_qwen2(seed: int = 0) -> transformers.PreTrainedModel:
    config = transformers.Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=128, vocab_size=100,
                                      tie_word_embeddings=True)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def filled(value: float, size: int = 256) -> dict[str, torch.Tensor]:
    return {"a": torch.full((size,), value), "b": torch.full((4, size), value, dtype=torch.bfloat16)}


@pytest.fixture
def db(tmp_path: Path) -> ParamDB:
    return ParamDB(tmp_path / "params", "exp", "trial0")


def assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(actual) == set(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert torch.equal(actual[name], tensor), name


def test_layout_and_round_trip_of_every_dtype(db: ParamDB) -> None:
    state = {
        "f32": torch.randn(3, 5), "f16": torch.randn(7).half(), "bf16": torch.randn(2, 3).bfloat16(),
        "f64": torch.randn(3).double(), "i64": torch.arange(5), "i32": torch.arange(3, dtype=torch.int32),
        "i8": torch.tensor([-3, 4], dtype=torch.int8), "u8": torch.tensor([1, 255], dtype=torch.uint8),
        "mask": torch.tensor([True, False, True]), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4),
        "strided": torch.randn(4, 6).t(),
    }
    path = db.push("policy", state, 3, metadata={"step": 30, "note": "x"})
    assert path == db.root / "exp" / "trial0" / "policy" / "v00000003"
    assert_same(load_file(path / "model.safetensors"), state)  # the shard is valid safetensors
    assert_same(db.get("policy", 3), state)
    assert_same(db.get("policy"), state)
    loaded = db.fetch("policy", "latest")
    assert (loaded.version, loaded.metadata, loaded.fell_back_from) == (3, {"step": 30, "note": "x"}, None)
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors"}
    assert manifest["files"]["model.safetensors"]["size"] == (path / "model.safetensors").stat().st_size
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".tmp")] == []


def test_shards_are_bounded_and_indexed(tmp_path: Path) -> None:
    db = ParamDB(tmp_path, "exp", "trial0", config=ParamDBConfig(max_shard_bytes=3000))
    state = {f"t{i}": torch.full((250,), float(i)) for i in range(7)}  # 1000 bytes each
    path = db.push("policy", state, 0)
    shards = sorted(path.glob("*.safetensors"))
    assert [s.name for s in shards] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert all(s.stat().st_size <= 3000 + 512 for s in shards)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["t6"] == "model-00003-of-00003.safetensors"
    assert index["metadata"]["total_size"] == 7000
    assert_same(db.get("policy", 0), state)


@pytest.mark.parametrize("max_shard_bytes", [1 << 30, 60_000])
def test_pushed_model_loads_with_from_pretrained_and_gives_same_logits(tmp_path: Path, max_shard_bytes: int) -> None:
    db = ParamDB(tmp_path, "exp", "trial0", config=ParamDBConfig(max_shard_bytes=max_shard_bytes))
    model = tiny_qwen2()
    path = db.push("policy", model, 7)
    assert (len(list(path.glob("*.safetensors"))) > 1) == (max_shard_bytes < 1 << 30)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    tokens = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, reloaded(tokens).logits)
    # The tied lm_head is stored once and comes back as the very same tensor as the embedding.
    stored = json.loads((path / "manifest.json").read_text())["aliases"]
    assert stored == {"lm_head.weight": "model.embed_tokens.weight"}
    state = db.get("policy", 7)
    assert_same(state, model.state_dict())
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
    fresh = tiny_qwen2(seed=5)
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, fresh(tokens).logits)


def test_state_dict_with_config_and_as_path(db: ParamDB) -> None:
    model = tiny_qwen2()
    path = db.push("policy", dict(model.state_dict()), 1, config=model.config)
    assert db.get("policy", as_path=True) == path
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(db.get("policy", 1, as_path=True))
    assert_same(reloaded.state_dict(), model.state_dict())


def test_corrupt_newest_shard_is_named_and_fallback_returns_previous(db: ParamDB, caplog) -> None:
    db.push("policy", filled(1.0), 1)
    newest = db.push("policy", filled(2.0), 2)
    shard = newest / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptVersionError, match="checksum mismatch") as info:
        db.get("policy")
    assert str(shard) in str(info.value) and info.value.path == str(shard)
    with pytest.raises(CorruptVersionError, match=str(shard)):
        db.get("policy", as_path=True)
    with caplog.at_level(logging.WARNING, logger="zrl.paramdb.db"):
        loaded = db.fetch("policy", fallback=True)
    assert (loaded.version, loaded.fell_back_from) == (1, 2)
    assert_same(loaded.state_dict, filled(1.0))
    assert "fell back to version 1" in caplog.text and str(shard) in caplog.text
    assert_same(db.get("policy", fallback=True), filled(1.0))
    with pytest.raises(CorruptVersionError):
        db.get("policy", 2, fallback=True)  # fallback only applies to "latest"


def test_truncated_and_missing_files_are_named(db: ParamDB) -> None:
    path = db.push("policy", filled(1.0), 1)
    shard = path / "model.safetensors"
    size = shard.stat().st_size
    os.truncate(shard, size - 100)
    with pytest.raises(CorruptVersionError, match=rf"{shard}: file is truncated: {size - 100} bytes"):
        db.get("policy")
    shard.unlink()
    with pytest.raises(CorruptVersionError, match=f"{shard}: file listed in the manifest is missing"):
        db.get("policy")
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptVersionError, match="manifest.json: malformed manifest"):
        db.get("policy")
    with pytest.raises(CorruptVersionError, match="no older valid version"):
        db.get("policy", fallback=True)


@pytest.mark.parametrize(("code", "reason"), [(errno.ENOSPC, "disk full"), (errno.EACCES, "permission denied")])
def test_failed_push_removes_partial_version_and_keeps_earlier_ones(tmp_path: Path, monkeypatch, code: int,
                                                                    reason: str) -> None:
    # Several shards, so the failure happens while other shards are being written by other threads.
    db = ParamDB(tmp_path, "exp", "trial0", config=ParamDBConfig(max_shard_bytes=40_000))
    db.push("policy", filled(1.0, 4096), 1, tags=("best",))
    real_write = os.write
    written = [0]

    def failing_write(fd: int, data) -> int:
        if written[0] > 10_000:
            raise OSError(code, os.strerror(code))
        written[0] += len(data)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(PushError, match=f"version 2 failed: {reason}.*while writing .*/model-0000[1-4]-of-00004.safetensors.*"
                       "earlier versions are intact"
                       ) as info:
        db.push("policy", {f"t{i}": torch.full((4096,), 2.0) for i in range(8)}, 2, tags=("best",))
    assert info.value.errno == code and isinstance(info.value.__cause__, OSError)
    monkeypatch.setattr(os, "write", real_write)
    model_dir = db.model_dir("policy")
    assert sorted(p.name for p in model_dir.iterdir() if p.name.startswith(".tmp")) == []
    assert db.list_versions("policy") == [1] and db.latest_version("policy") == 1 and db.tags("policy") == {"best": 1}
    assert_same(db.get("policy"), filled(1.0, 4096))
    db.push("policy", filled(2.0), 2)  # the same version can be pushed once the disk has room again
    assert_same(db.get("policy"), filled(2.0))


def test_tags_gc_and_latest(db: ParamDB) -> None:
    for version in range(1, 7):
        db.push("policy", filled(float(version)), version, tags=("first",) if version == 1 else ())
    db.tag("policy", 3, "best")
    assert db.tags("policy") == {"best": 3, "first": 1}
    assert_same(db.get("policy", "best"), filled(3.0))
    db.push("policy", filled(0.5), 0)  # an older version does not move latest
    assert db.latest_version("policy") == 6
    assert db.gc("policy", keep_last=2) == [0, 2, 4]
    assert db.list_versions("policy") == [1, 3, 5, 6]
    assert_same(db.get("policy"), filled(6.0))
    with pytest.raises(VersionNotFoundError, match="version 2 does not exist"):
        db.get("policy", 2)
    with pytest.raises(VersionNotFoundError, match="no tag 'nope'"):
        db.get("policy", "nope")
    with pytest.raises(VersionNotFoundError, match="cannot tag"):
        db.tag("policy", 4, "x")
    with pytest.raises(VersionExistsError, match="version 6 already exists"):
        db.push("policy", filled(9.0), 6)
    with pytest.raises(VersionNotFoundError, match="no version yet"):
        db.get("other")
    with pytest.raises(ValueError, match="keep_last"):
        db.gc("policy", keep_last=0)
    db.untag("policy", "best")
    db.untag("policy", "never-set")
    assert db.tags("policy") == {"first": 1} and db.list_versions("policy") == [1, 3, 5, 6]


def test_gc_removes_temporaries_of_dead_processes(db: ParamDB) -> None:
    db.push("policy", filled(1.0), 1)
    model_dir = db.model_dir("policy")
    host = os.uname().nodename
    dead = model_dir / f".tmp-v00000002-{host}-999999999-abcd"
    alive = model_dir / f".tmp-v00000003-{host}-{os.getpid()}-abcd"
    dead.mkdir()
    alive.mkdir()
    db.gc("policy", keep_last=1)
    assert not dead.exists() and alive.exists()


def test_bad_names_and_arguments_are_clear(tmp_path: Path, db: ParamDB) -> None:
    with pytest.raises(InvalidNameError, match="experiment name 'a/b'"):
        ParamDB(tmp_path, "a/b", "t")
    with pytest.raises(InvalidNameError, match="trial name must be a non-empty string, got ''"):
        ParamDB(tmp_path, "a", "")
    with pytest.raises(InvalidNameError, match="model name '..'"):
        db.push("..", filled(1.0), 1)
    with pytest.raises(InvalidNameError, match="tag 'latest' is reserved"):
        db.push("policy", filled(1.0), 1, tags=("latest",))
    with pytest.raises(ValueError, match="version must be an int"):
        db.push("policy", filled(1.0), -1)
    with pytest.raises(TypeError, match="not JSON-serializable"):
        db.push("policy", filled(1.0), 1, metadata={"x": object()})
    with pytest.raises(TypeError, match="entry 'w' is a str"):
        db.push("policy", {"w": "weights"}, 1)
    with pytest.raises(TypeError, match="version must be an int, 'latest' or a tag"):
        db.get("policy", 1.5)
    assert db.list_versions("policy") == []


def test_wait_newer_sees_a_push_from_another_thread(db: ParamDB) -> None:
    with pytest.raises(TimeoutError, match="newer than None"):
        db.wait_newer("policy", None, timeout=0.2)
    db.push("policy", filled(1.0), 1)
    assert db.wait_newer("policy", None, timeout=1) == 1
    pusher = threading.Timer(0.3, lambda: db.push("policy", filled(2.0), 2))
    pusher.start()
    try:
        start = time.monotonic()
        assert db.wait_newer("policy", 1, timeout=10) == 2
        assert time.monotonic() - start < 5
    finally:
        pusher.join()
    with pytest.raises(TimeoutError, match="newer than 2.*latest on disk: 2"):
        db.wait_newer("policy", 2, timeout=0.1)


def test_returned_tensors_are_private_and_survive_gc(db: ParamDB) -> None:
    db.push("policy", filled(1.0), 1)
    first = db.get("policy", 1)
    first["a"].add_(5.0)  # tensors map the file copy-on-write: changing them leaves the stored version alone
    assert_same(db.get("policy", 1), filled(1.0))
    db.push("policy", filled(2.0), 2)
    assert db.gc("policy", keep_last=1) == [1]
    assert torch.equal(first["b"], filled(1.0)["b"]) and torch.equal(first["a"], filled(6.0)["a"])


def test_gc_never_deletes_a_pinned_version(db: ParamDB) -> None:
    for version in range(1, 6):
        db.push("policy", filled(float(version)), version)
    db.pin("policy", 2, "policy-0")
    assert db.pins("policy") == {"policy-0": 2}
    assert db.gc("policy", keep_last=1) == [1, 3, 4]
    assert db.list_versions("policy") == [2, 5]
    # A holder has one pin: moving it releases the old version to the next gc.
    db.pin("policy", 5, "policy-0")
    assert db.gc("policy", keep_last=1) == [2]
    db.unpin("policy", "policy-0")
    assert db.pins("policy") == {}
    with pytest.raises(VersionNotFoundError, match="cannot pin model 'policy' version 3"):
        db.pin("policy", 3, "policy-0")


def test_newer_version_never_raises(tmp_path: Path) -> None:
    class BrokenResolver:
        def get(self, key: str) -> str:
            raise ConnectionError("name service down")

    db = ParamDB(tmp_path / "params", "exp", "t", name_resolver=BrokenResolver())
    assert db.newer_version("policy", None) is None  # nothing pushed, no directory, name service down
    db.push("policy", filled(1.0), 3)
    assert db.newer_version("policy", None) == 3
    assert db.newer_version("policy", 2) == 3
    assert db.newer_version("policy", 3) is None
    (db.model_dir("policy") / "latest").write_text("garbage\n")
    assert db.newer_version("policy", None) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI has none)")
def test_weights_on_a_gpu_are_pushed_as_they_are(db: ParamDB) -> None:
    state = {"w": torch.randn(64, 32, device="cuda"), "b": torch.arange(10, device="cuda", dtype=torch.int64),
             "h": torch.randn(7, device="cuda", dtype=torch.bfloat16)}
    db.push("m", state, 1)
    got = db.get("m", 1)
    for name, tensor in state.items():
        assert got[name].device.type == "cpu" and torch.equal(got[name], tensor.cpu()), name
