"""Contract tests of the name service, run against the memory, file and redis backends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import free_port

from zrl.nameresolve import (
    NameEntryExistsError,
    NameEntryNotFoundError,
    NameResolveError,
    NameResolver,
    NameServiceUnavailableError,
    make_name_resolver,
    names,
)
from zrl.nameresolve.redis_backend import RedisNameResolver, redact_url

BACKENDS = ["memory", "file", "redis"]
REPO_ROOT = Path(__file__).resolve().parents[1]

MakeResolver = Callable[[], NameResolver]


def eventually(condition: Callable[[], bool], timeout: float, poll: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return condition()


def exists(resolver: NameResolver, name: str) -> bool:
    try:
        resolver.get(name)
    except NameEntryNotFoundError:
        return False
    return True


def backend_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "memory":
        return f"memory://test-{uuid.uuid4().hex}"
    if backend == "file":
        return (tmp_path / "names").as_uri()
    return request.getfixturevalue("redis_server").url


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(request.param, request, tmp_path)


@pytest.fixture
def make(url: str) -> Iterator[MakeResolver]:
    """Builds resolvers on one shared store (as separate processes would see it) and closes them all."""
    made: list[NameResolver] = []

    def build() -> NameResolver:
        resolver = make_name_resolver(url)
        made.append(resolver)
        return resolver

    yield build
    for resolver in made:
        resolver.close()


@pytest.fixture
def ns(make: MakeResolver) -> NameResolver:
    return make()


def test_add_get_and_exists_error(ns: NameResolver, make: MakeResolver) -> None:
    ns.add("exp/t/a", "1")
    assert ns.get("exp/t/a") == "1"
    assert make().get("exp/t/a") == "1"
    with pytest.raises(NameEntryExistsError, match="exp/t/a"):
        make().add("exp/t/a", "2")
    assert ns.get("exp/t/a") == "1"
    make().add("exp/t/a", "2", replace=True)
    assert ns.get("exp/t/a") == "2"


def test_concurrent_adds_of_one_name_have_one_winner(make: MakeResolver) -> None:
    resolvers = [make() for _ in range(6)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(resolvers))

    def contend(i: int) -> None:
        barrier.wait(5)
        try:
            resolvers[i].add("exp/t/leader", str(i))
            outcomes.append(str(i))
        except NameEntryExistsError:
            outcomes.append("lost")

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(resolvers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    winners = [o for o in outcomes if o != "lost"]
    assert len(outcomes) == len(resolvers) and len(winners) == 1
    assert resolvers[0].get("exp/t/leader") == winners[0]


def test_get_missing_raises_key_error(ns: NameResolver) -> None:
    with pytest.raises(NameEntryNotFoundError, match="exp/t/missing") as info:
        ns.get("exp/t/missing")
    assert isinstance(info.value, KeyError)


def test_values_round_trip_unicode_and_separators(ns: NameResolver) -> None:
    value = 'tcp://127.0.0.1:5555 {"x": "é/ü"}\n'
    ns.add("exp/t/addr", value)
    assert ns.get("exp/t/addr") == value


def test_add_subentry_makes_unique_keys_under_root(ns: NameResolver) -> None:
    keys = [ns.add_subentry("exp/t/servers", f"addr{i}") for i in range(3)]
    assert len(set(keys)) == 3
    for i, key in enumerate(keys):
        assert key.startswith("exp/t/servers/") and "/" not in key[len("exp/t/servers/"):]
        assert ns.get(key) == f"addr{i}"
    assert ns.find_subtree("exp/t/servers") == sorted(keys)


def test_subtree_is_sorted_and_respects_segment_boundaries(ns: NameResolver) -> None:
    entries = {"exp/t/a/b/z": "z", "exp/t/a/b": "root", "exp/t/a/b/c/d": "d", "exp/t/a/b/a": "a",
               "exp/t/a/bc": "sibling", "exp/t/a/b-x": "dash", "exp/t/a": "parent"}
    for key, value in entries.items():
        ns.add(key, value)
    expected_keys = ["exp/t/a/b", "exp/t/a/b/a", "exp/t/a/b/c/d", "exp/t/a/b/z"]
    assert ns.find_subtree("exp/t/a/b") == expected_keys
    assert ns.get_subtree("exp/t/a/b") == [entries[k] for k in expected_keys]
    assert ns.find_subtree("exp/t/a") == sorted(entries)
    assert ns.find_subtree("exp/t/nothing") == []
    assert ns.get_subtree("exp/t/nothing") == []


def test_subtree_root_with_glob_characters_is_literal(ns: NameResolver) -> None:
    ns.add("exp/t/s*/1", "star")
    ns.add("exp/t/sx/1", "plain")
    ns.add("exp/t/s[x]/1", "bracket")
    assert ns.get_subtree("exp/t/s*") == ["star"]
    assert ns.get_subtree("exp/t/s[x]") == ["bracket"]


def test_wait_returns_value_added_later(ns: NameResolver, make: MakeResolver) -> None:
    other = make()
    timer = threading.Timer(0.2, other.add, args=("exp/t/late", "here"))
    timer.start()
    try:
        started = time.monotonic()
        assert ns.wait("exp/t/late", timeout=10) == "here"
        assert time.monotonic() - started < 5
    finally:
        timer.cancel()


def test_wait_times_out(ns: NameResolver) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="exp/t/never"):
        ns.wait("exp/t/never", timeout=0.3)
    assert 0.25 < time.monotonic() - started < 5


def test_delete(ns: NameResolver, make: MakeResolver) -> None:
    ns.add("exp/t/x", "1")
    ns.add("exp/t/x/child", "2")
    make().delete("exp/t/x")
    assert not exists(ns, "exp/t/x")
    assert ns.get("exp/t/x/child") == "2"
    with pytest.raises(NameEntryNotFoundError, match="exp/t/x"):
        ns.delete("exp/t/x")
    ns.add("exp/t/x", "again")
    assert ns.get("exp/t/x") == "again"


def test_clear_subtree_leaves_siblings(ns: NameResolver) -> None:
    for key in ["exp/t/a", "exp/t/a/1", "exp/t/a/2/3", "exp/t/ab", "exp/t/b"]:
        ns.add(key, key)
    ns.clear_subtree("exp/t/a")
    assert ns.find_subtree("exp/t") == ["exp/t/ab", "exp/t/b"]
    ns.clear_subtree("exp/t/a")  # empty subtree: no error
    ns.add("exp/t/a/1", "new")
    assert ns.get("exp/t/a/1") == "new"


def test_reset_deletes_only_own_names(ns: NameResolver, make: MakeResolver) -> None:
    other = make()
    ns.add("exp/t/mine", "1")
    ns.add("exp/t/mine_ka", "2", keepalive_ttl=5)
    ns.add_subentry("exp/t/sub", "3")
    other.add("exp/t/theirs", "4")
    ns.reset()
    assert other.find_subtree("exp/t") == ["exp/t/theirs"]
    ns.add("exp/t/after_reset", "5", keepalive_ttl=0.3)  # still usable, with a new refresher
    time.sleep(0.8)
    assert other.get("exp/t/after_reset") == "5"


def test_keepalive_entry_outlives_ttl_while_refreshed(ns: NameResolver, make: MakeResolver) -> None:
    reader = make()
    ns.add("exp/t/alive", "v", keepalive_ttl=0.4)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert reader.get("exp/t/alive") == "v"
        time.sleep(0.1)


def test_keepalive_entry_expires_when_refresher_stops(ns: NameResolver, make: MakeResolver) -> None:
    reader = make()
    ns.add("exp/t/ka", "v", keepalive_ttl=0.5)
    ns.add("exp/t/plain", "p")
    assert reader.get("exp/t/ka") == "v"
    ns.close()  # stops the refresher without deleting, as a hung process would
    assert eventually(lambda: not exists(reader, "exp/t/ka"), timeout=1.5)
    assert reader.find_subtree("exp/t") == ["exp/t/plain"]
    reader.add("exp/t/ka", "reused")  # an expired name is free again
    assert reader.get("exp/t/ka") == "reused"


def test_deleted_keepalive_entry_is_not_resurrected(ns: NameResolver, make: MakeResolver) -> None:
    ns.add("exp/t/ka", "v", keepalive_ttl=0.3)
    make().delete("exp/t/ka")
    time.sleep(0.5)
    assert not exists(ns, "exp/t/ka")


def test_closed_resolver_refuses_new_names(ns: NameResolver) -> None:
    ns.close()
    with pytest.raises(NameResolveError, match="closed"):
        ns.add("exp/t/x", "1")


def test_watch_fires_once_when_name_disappears(ns: NameResolver, make: MakeResolver) -> None:
    owner = make()
    owner.add("exp/t/server", "addr")
    calls: list[float] = []
    handle = ns.watch(["exp/t/server"], lambda: calls.append(time.monotonic()), poll=0.05)
    time.sleep(0.3)
    assert calls == [] and not handle.fired.is_set()
    owner.delete("exp/t/server")
    assert handle.fired.wait(5)
    time.sleep(0.2)
    assert len(calls) == 1


def test_watch_waits_for_all_names(ns: NameResolver, make: MakeResolver) -> None:
    owner = make()
    owner.add("exp/t/s1", "a")
    owner.add("exp/t/s2", "b")
    handle = ns.watch(["exp/t/s1", "exp/t/s2"], lambda: None, poll=0.05)
    owner.delete("exp/t/s1")
    assert not handle.fired.wait(0.3)
    owner.delete("exp/t/s2")
    assert handle.fired.wait(5)


def test_watch_fires_on_keepalive_expiry(ns: NameResolver, make: MakeResolver) -> None:
    owner = make()
    owner.add("exp/t/server", "addr", keepalive_ttl=0.3)
    fired = threading.Event()
    ns.watch(["exp/t/server"], fired.set, poll=0.05)
    assert not fired.wait(0.5)
    owner.close()
    assert fired.wait(3)


def test_watch_cancel_and_callback_errors(ns: NameResolver) -> None:
    ns.add("exp/t/a", "1")
    cancelled_calls: list[int] = []
    handle = ns.watch(["exp/t/a"], lambda: cancelled_calls.append(1), poll=0.02)
    handle.cancel()
    handle.thread.join(2)
    ns.delete("exp/t/a")
    time.sleep(0.1)
    assert cancelled_calls == []

    def boom() -> None:
        raise RuntimeError("callback failed")

    failing = ns.watch(["exp/t/gone"], boom, poll=0.02)
    assert failing.fired.wait(2)  # the error is logged; the resolver keeps working
    ns.add("exp/t/b", "2")
    assert ns.get("exp/t/b") == "2"


def test_trials_never_see_each_other(ns: NameResolver) -> None:
    for trial in ["t1", "t10", "t2"]:
        ns.add(names.worker("exp", trial, "rollout", 0), f"w-{trial}")
        ns.add_subentry(names.inference_stream("exp", trial, "policy"), f"srv-{trial}")
        ns.add(names.param_version("exp", trial, "actor"), "3")
    t1 = ns.find_subtree(names.trial_root("exp", "t1"))
    assert len(t1) == 3 and all(key.startswith("exp/t1/") for key in t1)
    assert ns.get_subtree(names.inference_stream("exp", "t1", "policy")) == ["srv-t1"]
    assert ns.get_subtree(names.worker_root("exp", "t10")) == ["w-t10"]
    ns.clear_subtree(names.trial_root("exp", "t1"))
    assert ns.find_subtree(names.trial_root("exp", "t1")) == []
    assert len(ns.find_subtree(names.trial_root("exp", "t10"))) == 3
    assert len(ns.find_subtree(names.trial_root("exp", "t2"))) == 3


@pytest.mark.parametrize("bad", ["", "/a", "a/", "a//b", "a/../b", "a/.hidden", 3])
def test_malformed_keys_are_rejected(ns: NameResolver, bad: object) -> None:
    with pytest.raises((ValueError, TypeError), match="name"):
        ns.add(bad, "v")  # type: ignore[arg-type]
    with pytest.raises((ValueError, TypeError)):
        ns.get(bad)  # type: ignore[arg-type]


def test_bad_value_and_ttl_are_rejected(ns: NameResolver) -> None:
    with pytest.raises(TypeError, match="exp/t/a"):
        ns.add("exp/t/a", b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keepalive_ttl"):
        ns.add("exp/t/a", "v", keepalive_ttl=0)
    assert not exists(ns, "exp/t/a")


CHILD = """
import sys, time
from zrl.nameresolve import make_name_resolver
resolver = make_name_resolver(sys.argv[1])
resolver.add(sys.argv[2], "alive", keepalive_ttl=float(sys.argv[3]))
print("ready", flush=True)
time.sleep(60)
"""


OWNED = "exp/t/worker/rollout/0"
OWNED_TTL = 1.0


@pytest.fixture(params=["file", "redis"])
def owner(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, NameResolver]]:
    """A separate process that holds the keepalive name OWNED, and a reader of the same service."""
    url = backend_url(request.param, request, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, url, OWNED, str(OWNED_TTL)], stdout=subprocess.PIPE,
                             env=env, text=True)
    reader = make_name_resolver(url)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        yield child, reader
    finally:
        child.kill()
        child.wait(10)
        reader.close()


def test_names_of_a_killed_process_expire(owner: tuple[subprocess.Popen, NameResolver]) -> None:
    child, reader = owner
    time.sleep(1.5 * OWNED_TTL)  # longer than the TTL: the child's refresher is keeping the name
    assert reader.get(OWNED) == "alive"
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    killed = time.monotonic()
    assert eventually(lambda: not exists(reader, OWNED), timeout=2 * OWNED_TTL)
    assert time.monotonic() - killed > OWNED_TTL / 3  # it expired, rather than having been deleted


def test_names_of_a_suspended_process_come_back_when_it_resumes(owner: tuple[subprocess.Popen, NameResolver]) -> None:
    # A process stopped (SIGSTOP, a suspended Slurm job) longer than its TTL still owns its names.
    child, reader = owner
    child.send_signal(signal.SIGSTOP)
    assert eventually(lambda: not exists(reader, OWNED), timeout=3 * OWNED_TTL)
    child.send_signal(signal.SIGCONT)
    assert eventually(lambda: exists(reader, OWNED), timeout=3 * OWNED_TTL)


def test_memory_stores_are_shared_by_name_only() -> None:
    store = f"memory://shared-{uuid.uuid4().hex}"
    a, b, c = make_name_resolver(store), make_name_resolver(store), make_name_resolver(store + "-other")
    a.add("exp/t/x", "1")
    assert b.get("exp/t/x") == "1"
    assert not exists(c, "exp/t/x")


def test_unknown_scheme_names_it_and_the_supported_ones() -> None:
    with pytest.raises(ValueError, match=r"'etcd'.*memory.*file.*redis"):
        make_name_resolver("etcd://host:2379")
    with pytest.raises(ValueError, match="scheme"):
        make_name_resolver("/just/a/path")


def test_file_backend_needs_absolute_path_and_reports_corrupt_entries(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="absolute"):
        make_name_resolver("file://relative/dir")
    ns = make_name_resolver((tmp_path / "names").as_uri())
    try:
        ns.add("exp/t/good", "1")
        ns.add("exp/t/bad", "2")
        (tmp_path / "names" / "exp/t/bad/.entry").write_bytes(b"\x00not json")
        with pytest.raises(NameResolveError, match=r"exp/t/bad.*corrupt"):
            ns.get("exp/t/bad")
        assert ns.get_subtree("exp/t") == ["1"]  # one bad entry does not hide the others
        ns.delete("exp/t/bad")
    finally:
        ns.close()


# A restart shorter than the refresh period fails no command (the client reconnects silently), so only the
# server's identity tells of it.
@pytest.mark.parametrize(("ttl", "downtime"), [(1.0, 0.5), (3.0, 0.0)], ids=["slow-restart", "fast-restart"])
def test_redis_keepalive_entry_returns_after_restart(redis_server, ttl: float, downtime: float) -> None:
    owner = RedisNameResolver(redis_server.url, retry_timeout=5)
    reader = RedisNameResolver(redis_server.url, retry_timeout=5)
    try:
        owner.add("exp/t/server", "addr", keepalive_ttl=ttl)
        owner.add("exp/t/plain", "p")
        redis_server.restart(downtime=downtime)
        restarted = time.monotonic()
        assert not exists(reader, "exp/t/plain")  # no persistence: the restart lost every key
        assert reader.wait("exp/t/server", timeout=2 * ttl) == "addr"
        assert time.monotonic() - restarted < 2 * ttl
        assert reader.find_subtree("exp/t") == ["exp/t/server"]
        owner.add("exp/t/new", "n")  # the owner's own operations work again too
        reader.delete("exp/t/server")  # a name deleted elsewhere is still not resurrected
        time.sleep(ttl / 3 + 0.5)
        assert not exists(reader, "exp/t/server")
    finally:
        owner.close()
        reader.close()


def test_redis_outage_gives_clear_errors_then_recovers(redis_server) -> None:
    ns = RedisNameResolver(redis_server.url, retry_timeout=0.5)
    try:
        ns.add("exp/t/a", "1")
        redis_server.stop()
        started = time.monotonic()
        with pytest.raises(NameServiceUnavailableError, match=rf"127\.0\.0\.1:{redis_server.port}.*exp/t/a"):
            ns.get("exp/t/a")
        assert 0.4 < time.monotonic() - started < 10
        with pytest.raises(TimeoutError, match="exp/t/a.*unreachable"):
            ns.wait("exp/t/a", timeout=0.5)
        patient = RedisNameResolver(redis_server.url, retry_timeout=60)
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="exp/t/a.*unreachable"):
            patient.wait("exp/t/a", timeout=0.5)  # the wait's timeout bounds the retries
        assert time.monotonic() - started < 5
        patient.close()
        redis_server.start()
        ns.add("exp/t/a", "2")
        assert ns.get("exp/t/a") == "2"
    finally:
        ns.close()


def test_redis_url_password_is_never_shown() -> None:
    assert redact_url("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact_url("rediss://:s3cret@host:6379/1") == "rediss://:***@host:6379/1"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"
    ns = RedisNameResolver(f"redis://user:s3cret@127.0.0.1:{free_port()}/0", retry_timeout=0.2)
    try:
        with pytest.raises(NameServiceUnavailableError) as info:
            ns.get("exp/t/a")
        assert "s3cret" not in str(info.value) and "***" in str(info.value)
    finally:
        ns.close()


def test_redis_subtree_operations_never_issue_keys(redis_server) -> None:
    import redis

    ns = make_name_resolver(redis_server.url)
    admin = redis.Redis.from_url(redis_server.url)
    try:
        for i in range(50):
            ns.add(f"exp/t/w/{i}", str(i))
        assert len(ns.find_subtree("exp/t/w")) == 50
        assert len(ns.get_subtree("exp/t")) == 50
        ns.clear_subtree("exp/t")
        ns.add("exp/t/k", "v", keepalive_ttl=5)
        ns.reset()
        stats = admin.info("commandstats")
        assert "cmdstat_scan" in stats  # the subtree reads did reach the server
        assert "cmdstat_keys" not in stats
    finally:
        ns.close()
        admin.close()


def test_names_build_keys_under_the_trial_root() -> None:
    root = names.trial_root("exp", "t")
    wid = names.worker_id("producer", 0)
    assert wid == "producer/0"
    keys = [
        names.worker("exp", "t", "producer", 0), names.worker_root("exp", "t"),
        names.worker_root("exp", "t", "producer"), names.worker_status("exp", "t", wid),
        names.worker_control("exp", "t", wid), names.inference_stream("exp", "t", "policy"),
        names.sample_stream("exp", "t", "samples"), names.param_version("exp", "t", "actor"),
        names.trainer_ddp("exp", "t", "actor", "rank", "0"), names.controller("exp", "t"),
    ]
    assert all(key.startswith(root + "/") for key in keys)
    assert len(set(keys)) == len(keys)
    assert names.worker("exp", "t", "producer", 0).startswith(names.worker_root("exp", "t", "producer") + "/")
    assert names.worker_status("exp", "t", wid) != names.worker_control("exp", "t", wid)


@pytest.mark.parametrize(("call", "match"), [
    (lambda: names.trial_root("a/b", "t"), "experiment 'a/b'"),
    (lambda: names.trial_root("exp", ""), "trial must not be empty"),
    (lambda: names.trial_root("", "t"), "experiment must not be empty"),
    (lambda: names.trial_root("exp", "t/1"), "trial 't/1'"),
    (lambda: names.worker("exp", "t", "rollout", -1), "index"),
    (lambda: names.worker_status("exp", "t", "producer"), "type/index"),
    (lambda: names.worker_control("exp", "t", "producer/x"), "index"),
    (lambda: names.inference_stream("exp", "t", "a/b"), "inference stream name"),
    (lambda: names.trainer_ddp("exp", "t", "actor", ""), "trainer_ddp part 0"),
])
def test_names_reject_bad_parts(call: Callable[[], str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
