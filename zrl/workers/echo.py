"""Demo workers that exercise both streams: producers ask an echo server, then post the answers to consumers.

    producer --inference stream "echo"--> server (doubles each value) --> producer --sample stream--> consumer

Every sample carries its producer, the producer's process (`incarnation`) and sequence number, so a consumer counts
distinct samples (a relaunched producer starts again from 0, and its repeats count as duplicates), what it received
from each producer process, and checks every answer.
"""

from __future__ import annotations

import time
from typing import Any

from zrl.nameresolve import names
from zrl.streams import (
    InferenceStreamConfig,
    NameResolvingInferenceClient,
    NameResolvingInferenceServer,
    NameResolvingSampleConsumer,
    NameResolvingSampleProducer,
    SampleStreamConfig,
    SocketConfig,
)
from zrl.workers.base import PollResult, Worker
from zrl.workers.drills import deadlock_in_native_code
from zrl.workers.echo_config import EchoConsumerConfig, EchoProducerConfig, EchoServerConfig


class EchoServer(Worker):
    config_class = EchoServerConfig

    def _configure(self, config: EchoServerConfig) -> None:
        self.server = NameResolvingInferenceServer(
            self.name_resolver, names.inference_stream(self.context.experiment, self.context.trial, config.stream),
            InferenceStreamConfig(sockets=SocketConfig(bind_host=self.context.host)), name=config.stream,
            curve=self.context.curve)

    def _poll(self) -> PollResult:
        requests = self.server.poll_requests(self.config.max_batch, timeout=self.config.poll_timeout_s)
        if not requests:
            return PollResult()
        self.server.respond_many([(r, {"value": 2 * int(r.payload["value"])}) for r in requests])
        return PollResult(sample_count=len(requests), batch_count=1)

    def _stats(self) -> dict[str, Any]:
        return self.server.as_dict() if hasattr(self, "server") else {}

    def _close(self) -> None:
        if hasattr(self, "server"):
            self.server.close()


class EchoProducer(Worker):
    config_class = EchoProducerConfig

    def _configure(self, config: EchoProducerConfig) -> None:
        experiment, trial = self.context.experiment, self.context.trial
        self.client = NameResolvingInferenceClient(
            self.name_resolver, names.inference_stream(experiment, trial, config.inference_stream),
            name=config.inference_stream, curve=self.context.curve)
        self.producer = NameResolvingSampleProducer(
            self.name_resolver, names.sample_stream(experiment, trial, config.sample_stream),
            SampleStreamConfig(), name=config.sample_stream, curve=self.context.curve)
        self.next_seq = 0

    def _poll(self) -> PollResult:
        config = self.config
        if self.next_seq >= config.num_samples:
            self.producer.flush()
            return PollResult(done=True)
        seqs = range(self.next_seq, min(self.next_seq + config.batch_size, config.num_samples))
        ids = self.client.post_many({"value": seq} for seq in seqs)
        answers = self.client.wait(ids, timeout=config.request_timeout_s)
        # Counted before they are handed to the stream, so a consumer never reports more than was produced.
        self.next_seq = seqs[-1] + 1
        for seq, request_id in zip(seqs, ids, strict=True):
            self.producer.post({"producer": self.context.worker_id, "incarnation": self.incarnation, "seq": seq,
                                "value": seq, "answer": answers[request_id]["value"]})
        self.producer.flush()
        if 0 <= config.fail_after <= self.next_seq:
            raise RuntimeError(f"fail_after={config.fail_after} reached after {self.next_seq} samples (a drill)")
        if 0 <= config.hang_after <= self.next_seq:
            deadlock_in_native_code()
        if config.interval_s:
            time.sleep(config.interval_s)
        return PollResult(sample_count=len(seqs), batch_count=1)

    def _stats(self) -> dict[str, Any]:
        if not hasattr(self, "producer"):
            return {}
        posted = getattr(self, "next_seq", 0)
        return {"posted": posted, "accounting": {"produced": posted, "incarnation": self.incarnation},
                "samples": self.producer.as_dict(),
                "inference": self.client.as_dict()}

    def _close(self) -> None:
        if hasattr(self, "producer"):
            self.producer.close()
            self.client.close()


class EchoConsumer(Worker):
    config_class = EchoConsumerConfig

    def _configure(self, config: EchoConsumerConfig) -> None:
        self.consumer = NameResolvingSampleConsumer(
            self.name_resolver, names.sample_stream(self.context.experiment, self.context.trial, config.sample_stream),
            SampleStreamConfig(sockets=SocketConfig(bind_host=self.context.host)), name=config.sample_stream,
            curve=self.context.curve)
        self.seen: set[tuple[str, int]] = set()
        self.received = 0
        self.received_from: dict[str, int] = {}
        self.duplicates = 0
        self.wrong_answers = 0

    def _poll(self) -> PollResult:
        samples = self.consumer.consume(self.config.max_batch, timeout=self.config.poll_timeout_s)
        self.received += len(samples)
        for sample in samples:
            incarnation = str(sample.get("incarnation", ""))
            self.received_from[incarnation] = self.received_from.get(incarnation, 0) + 1
            key = (str(sample["producer"]), int(sample["seq"]))
            if key in self.seen:
                self.duplicates += 1
                continue
            self.seen.add(key)
            if sample["answer"] != 2 * sample["value"]:
                self.wrong_answers += 1
        done = len(self.seen) >= self.config.expected_samples
        return PollResult(sample_count=len(samples), batch_count=1 if samples else 0, done=done)

    def _stats(self) -> dict[str, Any]:
        if not hasattr(self, "consumer"):
            return {}
        # Every sample taken is checked (a repeat is counted as a duplicate): all are consumed, none is buffered.
        return {"distinct": len(self.seen), "duplicates": self.duplicates, "wrong_answers": self.wrong_answers,
                "accounting": {"received": self.received, "consumed": self.received,
                               "received_from": dict(self.received_from)},
                "samples": self.consumer.as_dict()}

    def _close(self) -> None:
        if hasattr(self, "consumer"):
            self.consumer.close()
