"""Streams keep moving through a Redis outage with the peers they know, and find new peers once it is back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from zrl.nameresolve import names
from zrl.nameresolve.redis_backend import RedisNameResolver
from zrl.streams import (
    InferenceStreamConfig,
    NameResolvingInferenceClient,
    NameResolvingInferenceServer,
    NameResolvingSampleConsumer,
    NameResolvingSampleProducer,
    SampleStreamConfig,
)

# Long enough that a stream which asks the name service on its data path visibly stalls, then fails.
RETRY_S = 5.0


@pytest.fixture
def resolvers(redis_server) -> Iterator[list[RedisNameResolver]]:
    made = [RedisNameResolver(redis_server.url, retry_timeout=RETRY_S) for _ in range(3)]
    yield made
    for resolver in made:
        resolver.close()


def serve(server: NameResolvingInferenceServer, stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.is_set():
            server.respond_many((request, request.payload) for request in server.poll_requests(16, timeout=0.02))
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_inference_client_answers_through_a_redis_outage_and_finds_new_servers_after(redis_server, resolvers):
    root = names.inference_stream("exp", "t", "policy")
    config = InferenceStreamConfig(resolve_interval_s=0.1, keepalive_ttl_s=3.0)
    stop = threading.Event()
    first = NameResolvingInferenceServer(resolvers[0], root, config)
    threads = [serve(first, stop)]
    client = NameResolvingInferenceClient(resolvers[1], root, config)
    second = None
    try:
        assert client.addresses == [first.address]
        redis_server.stop()
        time.sleep(0.3)  # the client's resolver is now failing in the background
        started = time.monotonic()
        for round_ in range(3):
            ids = client.post_many({"n": n} for n in range(10 * round_, 10 * round_ + 10))
            answers = client.wait(ids, timeout=RETRY_S / 2)
            assert sorted(answer["n"] for answer in answers.values()) == list(range(10 * round_, 10 * round_ + 10))
        assert time.monotonic() - started < RETRY_S / 2
        redis_server.start()
        second = NameResolvingInferenceServer(resolvers[2], root, config)
        threads.append(serve(second, stop))
        deadline = time.monotonic() + 3 * RETRY_S
        while sorted(client.addresses) != sorted([first.address, second.address]) and time.monotonic() < deadline:
            client.poll_responses(timeout=0.05)
        assert sorted(client.addresses) == sorted([first.address, second.address])
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
        client.close()
        first.close()
        if second is not None:
            second.close()


def test_sample_producer_delivers_through_a_redis_outage(redis_server, resolvers):
    root = names.sample_stream("exp", "t", "trees")
    config = SampleStreamConfig(batch_bytes=1, resolve_interval_s=0.1, keepalive_ttl_s=3.0)
    consumer = NameResolvingSampleConsumer(resolvers[0], root, config)
    producer = NameResolvingSampleProducer(resolvers[1], root, config)
    try:
        assert producer.addresses == [consumer.address]
        redis_server.stop()
        time.sleep(0.3)
        started = time.monotonic()
        for i in range(20):
            producer.post(i, flush=True)
        assert time.monotonic() - started < RETRY_S / 2
        got: list[int] = []
        deadline = time.monotonic() + 5
        while len(got) < 20 and time.monotonic() < deadline:
            got += consumer.consume(20 - len(got), timeout=0.1)
        assert sorted(got) == list(range(20))
    finally:
        producer.close()
        consumer.close()


def test_sample_producer_loses_nothing_through_fast_redis_restarts(redis_server, resolvers):
    # A restarted Redis is empty until each owner re-registers its names. A producer that dropped the consumer in
    # that moment lost the batches still on their way to it, though it had counted them as sent.
    root = names.sample_stream("exp", "t", "trees")
    consumer = NameResolvingSampleConsumer(resolvers[0], root, SampleStreamConfig(keepalive_ttl_s=3.0))
    producer = NameResolvingSampleProducer(resolvers[1], root, SampleStreamConfig(resolve_interval_s=0.05))
    got: list[int] = []
    stop = threading.Event()

    def drain_until_stopped() -> None:
        while not stop.is_set():
            got.extend(consumer.consume(1000, timeout=0.02))

    drain = threading.Thread(target=drain_until_stopped)
    drain.start()
    posted = 0
    try:
        for _ in range(6):
            until = time.monotonic() + 1.0
            while time.monotonic() < until:
                producer.post_many(range(posted, posted + 10))
                producer.flush()
                posted += 10
                time.sleep(0.005)
            redis_server.restart(downtime=0.05)
        deadline = time.monotonic() + 5
        while len(got) < posted and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        drain.join()
        producer.close()
        consumer.close()
    assert producer.as_dict()["sent"] == posted
    assert len(got) == posted and sorted(got) == list(range(posted))
