"""Config types of the echo demo workers, in a module of their own so the controller reads them without importing
the workers (`zrl.workers.echo`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EchoServerConfig:
    stream: str = "echo"
    """Name of the inference stream to serve."""
    max_batch: int = 256
    """Most requests answered per poll."""
    poll_timeout_s: float = 0.05
    """Longest wait for a request in one poll."""


@dataclass(frozen=True)
class EchoProducerConfig:
    inference_stream: str = "echo"
    """Inference stream whose servers answer each value."""
    sample_stream: str = "samples"
    """Sample stream the answered samples are posted to."""
    num_samples: int = 200
    """Samples this producer posts before it completes."""
    batch_size: int = 20
    """Requests sent together, then posted together, per poll."""
    interval_s: float = 0.0
    """Pause after each batch (to stretch a demo run)."""
    request_timeout_s: float = 30.0
    """Longest wait for the answers to one batch."""


@dataclass(frozen=True)
class EchoConsumerConfig:
    sample_stream: str = "samples"
    """Sample stream to drain."""
    expected_samples: int = 400
    """Distinct samples (all producers together) after which the consumer completes."""
    max_batch: int = 1024
    """Most samples taken per poll."""
    poll_timeout_s: float = 0.05
    """Longest wait for a sample in one poll."""
