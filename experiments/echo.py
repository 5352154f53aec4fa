# python -m zrl.controller experiments/echo.py
# The demo: producers ask an echo server over the inference stream, then post the answers to a consumer over the
# sample stream; the run ends when the consumer has every sample. Scale it with overrides, keeping
# workers.consumer.config.expected_samples = workers.producer.count * workers.producer.config.num_samples.

from zrl.config import ExperimentConfig, WorkerGroupConfig
from zrl.workers.echo_config import EchoConsumerConfig, EchoProducerConfig, EchoServerConfig

PRODUCERS = 2
SAMPLES_PER_PRODUCER = 200


def experiment() -> ExperimentConfig:
    return ExperimentConfig(
        experiment="echo",
        done_when=("consumer",),
        workers={
            "server": WorkerGroupConfig(type="echo_server", config=EchoServerConfig()),
            "consumer": WorkerGroupConfig(
                type="echo_consumer",
                config=EchoConsumerConfig(expected_samples=PRODUCERS * SAMPLES_PER_PRODUCER)),
            "producer": WorkerGroupConfig(
                type="echo_producer", count=PRODUCERS, after=("server", "consumer"),
                config=EchoProducerConfig(num_samples=SAMPLES_PER_PRODUCER)),
        },
    )
