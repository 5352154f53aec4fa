"""Sample stream over real ZeroMQ sockets: every variant, batching, garbage, message size limit, full-queue policy."""

from __future__ import annotations

import logging
import time
import uuid

import msgpack
import numpy as np
import pytest
import zmq

from zrl import wire
from zrl.nameresolve import make_name_resolver, names
from zrl.streams import (
    BroadcastSampleProducer,
    IpSampleConsumer,
    IpSampleProducer,
    NameResolvingSampleConsumer,
    NameResolvingSampleProducer,
    RoundRobinSampleProducer,
    SampleStreamConfig,
    SocketConfig,
    StreamFullError,
)


def _consume_all(consumer, count, timeout=5.0):
    got, deadline = [], time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += consumer.consume(count - len(got), timeout=0.1)
    return got


@pytest.fixture
def consumers():
    made = []
    yield made
    for consumer in made:
        consumer.close()


def _consumer(made, config=None, **kwargs):
    consumer = IpSampleConsumer(config=config or SampleStreamConfig(), **kwargs)
    made.append(consumer)
    return consumer


def test_ip_round_trip_of_arrays_and_dicts(consumers):
    consumer = _consumer(consumers)
    samples = [{"tree": i, "tokens": np.arange(i * 100, dtype=np.int64), "reward": float(i)} for i in range(20)]
    with IpSampleProducer(consumer.address, SampleStreamConfig(batch_bytes=1)) as producer:
        producer.post_many(samples)
        producer.flush()
        got = _consume_all(consumer, len(samples))
        assert producer.as_dict()["sent"] == 20 and producer.as_dict()["dropped"] == 0
    assert [sample["tree"] for sample in got] == list(range(20))
    for sample, original in zip(got, samples, strict=True):
        np.testing.assert_array_equal(sample["tokens"], original["tokens"])
    assert consumer.as_dict()["received"] == 20 and consumer.as_dict()["garbage"] == 0


def test_producer_batches_small_samples_until_the_byte_target(consumers):
    consumer = _consumer(consumers)
    with IpSampleProducer(consumer.address, SampleStreamConfig(batch_bytes=8 * 1024)) as producer:
        for i in range(64):
            producer.post(np.full(256, i, dtype=np.float32))  # 1 KiB each
        assert producer.as_dict()["messages_sent"] == 8, "64 x 1 KiB with an 8 KiB target makes 8 messages"
        producer.post(np.zeros(3))
        assert producer.as_dict()["sent"] == 64
    got = _consume_all(consumer, 65)
    assert [int(sample[0]) for sample in got[:64]] == list(range(64)) and len(got) == 65
    assert consumer.as_dict()["messages_received"] == 9, "close() flushes the partial batch"


def test_round_robin_spreads_over_consumers_without_duplicates(consumers):
    first, second = _consumer(consumers), _consumer(consumers)
    with RoundRobinSampleProducer([first.address, second.address], SampleStreamConfig(batch_bytes=1)) as producer:
        time.sleep(0.2)  # let both connections complete, so the first batches are not all given to one consumer
        for i in range(40):
            producer.post(i)
    a, b = _consume_all(first, 20, timeout=2.0), _consume_all(second, 20, timeout=2.0)
    assert a and b, f"both consumers get samples, got {len(a)} and {len(b)}"
    assert sorted(a + b) == list(range(40))


def test_broadcast_delivers_every_sample_to_every_consumer(consumers):
    first, second = _consumer(consumers), _consumer(consumers)
    with BroadcastSampleProducer([first.address, second.address], SampleStreamConfig(batch_bytes=1)) as producer:
        for i in range(30):
            producer.post({"i": i})
        assert producer.as_dict()["sent"] == 60
    for consumer in (first, second):
        assert [sample["i"] for sample in _consume_all(consumer, 30)] == list(range(30))


@pytest.mark.parametrize("backend", ["memory", "file"])
def test_name_resolving_producer_finds_registered_consumers_and_forgets_closed_ones(backend, tmp_path):
    url = f"memory://{uuid.uuid4().hex}" if backend == "memory" else f"file://{tmp_path}/names"
    resolver = make_name_resolver(url)
    root = names.sample_stream("exp", "trial", "trees")
    config = SampleStreamConfig(batch_bytes=1, resolve_interval_s=0.1, keepalive_ttl_s=2.0)
    first = NameResolvingSampleConsumer(resolver, root, config)
    second = NameResolvingSampleConsumer(resolver, root, config)
    producer = NameResolvingSampleProducer(resolver, root, config)
    try:
        assert sorted(producer.addresses) == sorted([first.address, second.address])
        time.sleep(0.2)
        for i in range(40):
            producer.post(i)
        a, b = _consume_all(first, 20, timeout=2.0), _consume_all(second, 20, timeout=2.0)
        assert a and b and sorted(a + b) == list(range(40))
        second.close()
        time.sleep(0.15)
        for i in range(10):
            producer.post(i)
        # Its name may come back (a restarted name service), so it is remembered a while, but sent nothing.
        assert sorted(_consume_all(first, 10)) == list(range(10))
        time.sleep(config.keepalive_ttl_s)
        producer.post(10)
        assert producer.addresses == [first.address]
        assert _consume_all(first, 1) == [10]
    finally:
        producer.close()
        first.close()
        second.close()
        resolver.close()


def test_garbage_is_dropped_counted_logged_once_per_kind_and_consumer_keeps_serving(consumers, caplog):
    consumer = _consumer(consumers)
    context = zmq.Context.instance()
    attacker = context.socket(zmq.PUSH)
    attacker.setsockopt(zmq.LINGER, 0)
    attacker.connect(consumer.address)
    garbage = [[b"\xc1junk"], [b"not msgpack at all"], [msgpack.packb([1, ["sample", "not a list"]])],
               [msgpack.packb([1, {"x": 1}])], [b"\x92\x01\xc0", b"stray frame"],
               wire.encode(["sample", [np.arange(10)]])[:1] + [b"x"] * 3]
    try:
        with caplog.at_level(logging.WARNING, logger="zrl.streams"):
            for frames in garbage:
                attacker.send_multipart(frames)
            with IpSampleProducer(consumer.address, SampleStreamConfig(batch_bytes=1)) as producer:
                for i in range(5):
                    producer.post(i)
            assert sorted(_consume_all(consumer, 5)) == list(range(5))
            deadline = time.monotonic() + 2
            while consumer.as_dict()["garbage"] < len(garbage) and time.monotonic() < deadline:
                consumer.consume(1, timeout=0.05)
    finally:
        attacker.close()
    counts = consumer.as_dict()
    assert counts["garbage"] == len(garbage) and counts["received"] == 5
    assert counts["garbage.undecodable"] == 4 and counts["garbage.not_a_sample_batch"] == 2
    warnings = [record for record in caplog.records if "malformed" in record.getMessage()]
    assert len(warnings) == 2, "one warning per kind of garbage"


def test_oversized_message_is_refused_and_consumer_keeps_serving(consumers):
    config = SampleStreamConfig(batch_bytes=1, sockets=SocketConfig(max_message_bytes=64 * 1024))
    consumer = _consumer(consumers, config)
    with IpSampleProducer(consumer.address, SampleStreamConfig(batch_bytes=1)) as big:
        big.post(np.zeros(1 << 20, dtype=np.uint8))
        with IpSampleProducer(consumer.address, config) as small:
            small.post("fits")
            assert _consume_all(consumer, 2, timeout=1.0) == ["fits"]
    assert consumer.as_dict()["received"] == 1


def test_drop_policy_with_no_live_consumer_counts_every_dropped_sample():
    address = f"tcp://127.0.0.1:{_unused_port()}"
    with IpSampleProducer(address, SampleStreamConfig(batch_bytes=1, full_policy="drop")) as producer:
        for i in range(7):
            producer.post(i)
        assert producer.as_dict()["dropped"] == 7 and producer.as_dict()["sent"] == 0
        assert producer.as_dict()["dropped.queue_full"] == 7


def test_block_policy_raises_stream_full_error_after_the_timeout():
    address = f"tcp://127.0.0.1:{_unused_port()}"
    config = SampleStreamConfig(batch_bytes=1, block_timeout_s=0.3)
    producer = IpSampleProducer(address, config)
    try:
        started = time.monotonic()
        with pytest.raises(StreamFullError, match="block_timeout_s=0.3"):
            producer.post("sample")
        assert 0.25 < time.monotonic() - started < 3.0
    finally:
        producer.close(flush=False)


def test_full_queue_to_a_slow_consumer_drops_and_accounts_for_every_sample(consumers):
    sockets = SocketConfig(send_hwm=2, recv_hwm=2)
    consumer = _consumer(consumers, SampleStreamConfig(sockets=sockets))
    config = SampleStreamConfig(batch_bytes=1, full_policy="drop", sockets=sockets)
    payload = np.zeros(1 << 20, dtype=np.uint8)
    posted = 120
    with IpSampleProducer(consumer.address, config) as producer:
        time.sleep(0.1)
        for _ in range(posted):
            producer.post(payload)
        counts = producer.as_dict()
        assert counts["dropped"] > 0, "120 MiB cannot fit in HWM 2+2 plus the kernel buffers"
        assert counts["sent"] + counts["dropped"] == posted
        got = _consume_all(consumer, counts["sent"], timeout=10.0)
    assert len(got) == counts["sent"] and consumer.consume(1, timeout=0.2) == []


def test_block_policy_waits_for_room_and_accounts_for_every_sample(consumers):
    sockets = SocketConfig(send_hwm=1, recv_hwm=1)
    consumer = _consumer(consumers, SampleStreamConfig(sockets=sockets))
    config = SampleStreamConfig(batch_bytes=1, block_timeout_s=0.05, sockets=sockets)
    payload = np.zeros(1 << 20, dtype=np.uint8)
    got, posted = [], 0
    with IpSampleProducer(consumer.address, config) as producer:
        with pytest.raises(StreamFullError):
            for _ in range(200):
                posted += 1
                producer.post(payload)
        for _ in range(20):
            got += consumer.consume(100, timeout=0.05)
        posted += 1
        producer.post(payload)
    counts = producer.as_dict()
    assert counts["dropped.stream_full"] == 1, "the sample that raised is counted, not lost"
    assert counts["sent"] + counts["dropped"] == posted
    got += _consume_all(consumer, counts["sent"] - len(got))
    assert len(got) == counts["sent"]


def test_broadcast_sends_to_every_target_that_has_room_and_counts_the_full_one(consumers):
    live = _consumer(consumers)
    full_address = f"tcp://127.0.0.1:{_unused_port()}"  # nobody listens: its queue holds send_hwm messages
    config = SampleStreamConfig(batch_bytes=1, block_timeout_s=0.2, sockets=SocketConfig(send_hwm=1))
    producer = BroadcastSampleProducer([full_address, live.address], config)
    try:
        with pytest.raises(StreamFullError):
            for i in range(2):
                producer.post(i)
        assert sorted(_consume_all(live, 2)) == [0, 1], "the live consumer gets every sample"
        counts = producer.as_dict()
        assert counts["sent"] + counts["dropped.stream_full"] == 4 and counts["dropped.stream_full"] >= 1
    finally:
        producer.close(flush=False)


@pytest.mark.parametrize("policy", ["drop", "block"])
def test_broadcast_without_consumers_counts_every_sample(policy):
    producer = BroadcastSampleProducer([], SampleStreamConfig(batch_bytes=1, full_policy=policy, block_timeout_s=0.1))
    try:
        if policy == "block":
            with pytest.raises(StreamFullError, match="no consumer"):
                producer.post("x")
            assert producer.as_dict()["dropped.stream_full"] == 1
        else:
            producer.post("x")
            assert producer.as_dict()["dropped.no_consumer"] == 1
    finally:
        producer.close(flush=False)


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="full_policy"):
        SampleStreamConfig(full_policy="spill")
    with pytest.raises(ValueError, match="send_hwm"):
        SocketConfig(send_hwm=0)


def _unused_port() -> int:
    from conftest import free_port

    return free_port()


def test_unencodable_sample_is_counted_and_the_rest_of_its_batch_is_sent(consumers):
    consumer = _consumer(consumers)
    with IpSampleProducer(consumer.address, SampleStreamConfig(batch_max_samples=3)) as producer:
        producer.post("a")
        producer.post(object())
        with pytest.raises(wire.WireError, match="sample 1 of 3"):
            producer.post("c")
        counts = producer.as_dict()
        assert counts["sent"] == 2 and counts["dropped.unencodable"] == 1
    assert sorted(_consume_all(consumer, 2)) == ["a", "c"]


def test_consume_keeps_its_deadline_under_a_flood_of_messages_without_samples(consumers):
    flood = 50_000
    consumer = _consumer(consumers, SampleStreamConfig(sockets=SocketConfig(recv_hwm=2 * flood)))
    flooder = zmq.Context.instance().socket(zmq.PUSH)
    flooder.setsockopt(zmq.SNDHWM, 2 * flood)
    flooder.setsockopt(zmq.LINGER, 0)
    flooder.connect(consumer.address)
    try:
        empty_batch = wire.encode(["sample", []])
        for _ in range(flood):
            flooder.send_multipart(empty_batch)
        time.sleep(1.0)  # let the flood reach the consumer's queue
        assert consumer.consume(1, timeout=0) == []
        read = consumer.as_dict()["messages_received"]
        assert 0 < read < flood / 10, f"a zero-timeout consume read {read} of {flood} queued messages"
    finally:
        flooder.close()


def test_size_limit_holds_for_the_whole_message_not_each_frame(consumers):
    consumer = _consumer(consumers, SampleStreamConfig(sockets=SocketConfig(max_message_bytes=100)))
    sender = zmq.Context.instance().socket(zmq.PUSH)
    sender.setsockopt(zmq.LINGER, 0)
    sender.connect(consumer.address)
    try:
        sender.send_multipart([b"x" * 80] * 50)
        sender.send_multipart(wire.encode(["sample", ["fits"]]))
        assert _consume_all(consumer, 1) == ["fits"]
    finally:
        sender.close()
    counts = consumer.as_dict()
    assert counts["garbage.too_large"] == 1 and counts["garbage"] == 1


def test_each_stream_kind_has_a_size_limit_of_its_own_by_default():
    from zrl.streams.control import CONTROL_SOCKETS
    from zrl.streams.inference import InferenceStreamConfig

    samples = SampleStreamConfig(sockets=SocketConfig(bind_host="127.0.0.1")).sockets.max_message_bytes
    requests = InferenceStreamConfig(sockets=SocketConfig(bind_host="127.0.0.1")).sockets.max_message_bytes
    control = CONTROL_SOCKETS.max_message_bytes
    assert control < samples <= 256 << 20 and control < requests <= 256 << 20
    assert SampleStreamConfig(sockets=SocketConfig(max_message_bytes=123)).sockets.max_message_bytes == 123


def test_producer_drops_and_counts_a_batch_over_the_size_limit(consumers):
    config = SampleStreamConfig(sockets=SocketConfig(max_message_bytes=64 * 1024))
    consumer = _consumer(consumers, config)
    with IpSampleProducer(consumer.address, config) as producer:
        producer.post(np.zeros(1 << 20, dtype=np.uint8), flush=True)
        producer.post("fits", flush=True)
        counts = producer.as_dict()
        assert counts["dropped.too_large"] == 1 and counts["sent"] == 1
    assert _consume_all(consumer, 1) == ["fits"]


def test_every_posted_sample_ends_in_exactly_one_counter():
    address = f"tcp://127.0.0.1:{_unused_port()}"  # nobody listens, so every send finds the queue full
    config = SampleStreamConfig(batch_max_samples=3, full_policy="drop", sockets=SocketConfig(max_message_bytes=4096))
    with IpSampleProducer(address, config) as producer:
        with pytest.raises(wire.WireError):
            producer.post_many(["a", object(), "b"])
        producer.post(np.zeros(8192, dtype=np.uint8), flush=True)
        producer.post("c", flush=True)
        counts = producer.as_dict()
    assert counts["sent"] + counts["dropped"] == 5
    assert (counts["dropped.unencodable"], counts["dropped.too_large"], counts["dropped.queue_full"]) == (1, 1, 3)
