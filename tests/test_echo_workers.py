"""The echo demo's workers take typed messages: a malformed request is refused alone, a malformed sample is counted
as garbage and the consumer goes on (real sample stream, memory name service)."""

from __future__ import annotations

import time
from pathlib import Path

from zrl.nameresolve import make_name_resolver, names
from zrl.streams import NameResolvingSampleProducer, SampleStreamConfig
from zrl.workers.base import WorkerContext
from zrl.workers.echo import EchoConsumer, EchoSample, echo_answer
from zrl.workers.echo_config import EchoConsumerConfig


def test_a_malformed_request_is_refused_with_the_field_named():
    assert echo_answer({"value": 21}) == {"value": 42}
    refused = echo_answer({"value": "21"})
    assert set(refused) == {"error"} and "echo request: field 'value'" in refused["error"]
    assert "echo request" in echo_answer(["not", "a", "map"])["error"]


def test_a_malformed_sample_is_counted_and_the_consumer_goes_on(tmp_path: Path):
    resolver = make_name_resolver(f"memory://{tmp_path.name}")
    consumer = EchoConsumer(WorkerContext("exp", "t", "consumer", 0), resolver)
    assert consumer._stats() == {}  # not configured yet: nothing to report
    config = EchoConsumerConfig(expected_samples=2)
    consumer._configure(config)
    consumer.config = config
    producer = NameResolvingSampleProducer(resolver, names.sample_stream("exp", "t", config.sample_stream),
                                           SampleStreamConfig(), name=config.sample_stream)
    try:
        producer.post(EchoSample("producer/0", 0, 3, 6, "p#1").to_wire())
        producer.post({"producer": "producer/0", "seq": "one", "value": 1, "answer": 2})
        producer.post({"garbage": True})
        producer.post(EchoSample("producer/0", 1, 4, 9, "p#1").to_wire())
        producer.flush()
        deadline = time.monotonic() + 10
        while not consumer._poll().done:
            assert time.monotonic() < deadline, consumer._stats()
        stats = consumer._stats()
        assert (stats["distinct"], stats["wrong_answers"], stats["garbage"]) == (2, 1, 2)
        assert stats["accounting"] == {"received": 2, "consumed": 2, "garbage": 2, "received_from": {"p#1": 2}}
    finally:
        producer.close()
        consumer._close()
        resolver.close()
