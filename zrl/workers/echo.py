"""Demo workers that exercise both streams: producers ask an echo server, then post the answers to consumers.

    producer --inference stream "echo"--> server (doubles each value) --> producer --sample stream--> consumer

Every sample carries its producer, the producer's process (`incarnation`) and sequence number, so a consumer counts
distinct samples (a relaunched producer starts again from 0, and its repeats count as duplicates), what it received
from each producer process, and checks every answer. The messages: `EchoRequest` (producer -> server),
`EchoAnswer` (server -> producer; a malformed request gets `{"error": str}` instead), `EchoSample` (producer ->
consumer; a malformed one is counted as garbage).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

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
from zrl.wire import WireError
from zrl.workers.base import PollResult, Worker
from zrl.workers.echo_config import EchoConsumerConfig, EchoProducerConfig, EchoServerConfig
from zrl.workers.messages import WireMessage


@dataclass(frozen=True)
class EchoRequest(WireMessage):
    wire_name: ClassVar[str] = "echo request"
    value: int


@dataclass(frozen=True)
class EchoAnswer(WireMessage):
    wire_name: ClassVar[str] = "echo answer"
    value: int


@dataclass(frozen=True)
class EchoSample(WireMessage):
    wire_name: ClassVar[str] = "echo sample"
    producer: str
    seq: int
    value: int
    answer: int
    incarnation: str = ""


def echo_answer(payload: object) -> dict[str, Any]:
    """The server's answer to one request: the value doubled, or the reason the request was refused."""
    try:
        return EchoAnswer(2 * EchoRequest.from_wire(payload).value).to_wire()
    except WireError as exc:
        return {"error": str(exc)}


class EchoServer(Worker):
    config_class = EchoServerConfig
    server: NameResolvingInferenceServer | None = None

    def _configure(self, config: EchoServerConfig) -> None:
        self.server = NameResolvingInferenceServer(
            self.name_resolver, names.inference_stream(self.context.experiment, self.context.trial, config.stream),
            InferenceStreamConfig(sockets=SocketConfig(bind_host=self.context.host)), name=config.stream,
            curve=self.context.curve)

    def _poll(self) -> PollResult:
        requests = self.server.poll_requests(self.config.max_batch, timeout=self.config.poll_timeout_s)
        if not requests:
            return PollResult()
        self.server.respond_many([(r, echo_answer(r.payload)) for r in requests])
        return PollResult(sample_count=len(requests), batch_count=1)

    def _stats(self) -> dict[str, Any]:
        return self.server.as_dict() if self.server is not None else {}

    def _close(self) -> None:
        if self.server is not None:
            self.server.close()


class EchoProducer(Worker):
    config_class = EchoProducerConfig
    producer: NameResolvingSampleProducer | None = None
    client: NameResolvingInferenceClient | None = None
    next_seq = 0

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
        ids = self.client.post_many(EchoRequest(seq).to_wire() for seq in seqs)
        answers = self.client.wait(ids, timeout=config.request_timeout_s)
        doubled = [_answer_value(answers[request_id]) for request_id in ids]
        # Counted before they are handed to the stream, so a consumer never reports more than was produced.
        self.next_seq = seqs[-1] + 1
        for seq, answer in zip(seqs, doubled, strict=True):
            self.producer.post(EchoSample(self.context.worker_id, seq, seq, answer, self.incarnation).to_wire())
        self.producer.flush()
        if config.interval_s:
            time.sleep(config.interval_s)
        return PollResult(sample_count=len(seqs), batch_count=1)

    def _stats(self) -> dict[str, Any]:
        if self.producer is None or self.client is None:
            return {}
        return {"posted": self.next_seq, "accounting": {"produced": self.next_seq, "incarnation": self.incarnation},
                "samples": self.producer.as_dict(),
                "inference": self.client.as_dict()}

    def _close(self) -> None:
        for stream in (self.producer, self.client):
            if stream is not None:
                stream.close()


def _answer_value(payload: object) -> int:
    if isinstance(payload, dict) and "error" in payload:
        raise RuntimeError(f"the echo server refused a request: {payload['error']}")
    return EchoAnswer.from_wire(payload).value


class EchoConsumer(Worker):
    config_class = EchoConsumerConfig
    consumer: NameResolvingSampleConsumer | None = None

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
        self.garbage = 0

    def _poll(self) -> PollResult:
        samples = self.consumer.consume(self.config.max_batch, timeout=self.config.poll_timeout_s)
        for payload in samples:
            try:
                sample = EchoSample.from_wire(payload)
            except WireError as exc:
                self.garbage += 1
                if self.garbage == 1:
                    self.logger.warning("dropping a malformed sample (further ones are only counted): %s", exc)
                continue
            self.received += 1
            self.received_from[sample.incarnation] = self.received_from.get(sample.incarnation, 0) + 1
            key = (sample.producer, sample.seq)
            if key in self.seen:
                self.duplicates += 1
                continue
            self.seen.add(key)
            if sample.answer != 2 * sample.value:
                self.wrong_answers += 1
        done = len(self.seen) >= self.config.expected_samples
        return PollResult(sample_count=len(samples), batch_count=1 if samples else 0, done=done)

    def _stats(self) -> dict[str, Any]:
        if self.consumer is None:
            return {}
        # Every sample taken is checked (a repeat is counted as a duplicate): all are consumed, none is buffered.
        return {"distinct": len(self.seen), "duplicates": self.duplicates, "wrong_answers": self.wrong_answers,
                "garbage": self.garbage,
                "accounting": {"received": self.received, "consumed": self.received, "garbage": self.garbage,
                               "received_from": dict(self.received_from)},
                "samples": self.consumer.as_dict()}

    def _close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
