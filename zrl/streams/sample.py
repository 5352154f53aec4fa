"""Sample stream protocol and configuration (PUSH-PULL).

Producers push, consumers pull. One ZeroMQ message carries a batch of samples::

    frames  wire.encode(["sample", [sample, sample, ...]])   (see zrl.wire for the frame layout)

A sample is anything `zrl.wire` encodes. Arrays handed to `post` are sent without copying, so the
caller must not modify them after posting.

Full-queue policy (`SampleStreamConfig.full_policy`): a producer's queue to a consumer is full when
`send_hwm` messages wait for it. With "block" the producer waits up to `block_timeout_s` for room,
then drops the batch, counts it and raises `StreamFullError`; with "drop" it drops the batch at once
and counts it. Consumers drop (and count under `garbage`) any message that does not decode.

Counters (`as_dict()`), in samples unless named `messages_*`. A producer counts each posted sample
in exactly one of these, once per target (each consumer under broadcast, else one) where marked *:

    sent                  *  handed to ZeroMQ for a consumer
    dropped.queue_full    *  "drop" policy: the queue was full
    dropped.stream_full   *  "block" policy: no room within block_timeout_s (or, once, a broadcast that
                             found no consumer)
    dropped.no_consumer      "drop" policy: a broadcast found no consumer
    dropped.too_large        its batch was over max_message_bytes
    dropped.unencodable      `zrl.wire` cannot encode it

`dropped` is the sum of the `dropped.*` counters. A consumer counts `received` samples and
`garbage.<kind>` messages (undecodable, not_a_sample_batch, too_large), and with CURVE (`zrl.streams.curve`) each
connection it refused as `refused.<kind>`: a producer without the trial's keys sends it nothing. Samples still queued in
ZeroMQ when their consumer dies are lost without a count: `sent` minus the consumers' `received`
is what was in flight or lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from zrl.streams.sockets import SocketConfig

SAMPLE_TAG = "sample"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Default size limit of one message: a batch of samples (a scored tree of many trajectories is a few MiB)."""


class StreamFullError(TimeoutError):
    """A producer's send queue stayed full for the whole block timeout."""


@dataclass(frozen=True)
class SampleStreamConfig:
    """Settings of one sample stream, for producers and consumers alike."""

    sockets: SocketConfig = field(default_factory=SocketConfig)
    """High-water marks, message size limit (default `MAX_MESSAGE_BYTES`) and bind host."""
    batch_bytes: int = 64 * 1024
    """A producer sends its buffered samples once they reach about this many bytes (1 = send each at once)."""
    batch_max_samples: int = 1024
    """A producer sends its buffered samples once this many are buffered."""
    full_policy: Literal["block", "drop"] = "block"
    """What a producer does when a consumer's queue is full: wait (then raise) or drop and count."""
    block_timeout_s: float = 30.0
    """Under the "block" policy, how long a send may wait for room before StreamFullError."""
    resolve_interval_s: float = 1.0
    """How often name-resolving producers look for new or vanished consumers."""
    keepalive_ttl_s: float = 10.0
    """TTL of a consumer's name-service entry; it vanishes this long after the consumer dies."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sockets", self.sockets.with_message_limit(MAX_MESSAGE_BYTES))
        if self.full_policy not in ("block", "drop"):
            raise ValueError(f"SampleStreamConfig.full_policy must be 'block' or 'drop', got {self.full_policy!r}")
        for name in ("batch_bytes", "batch_max_samples", "block_timeout_s", "resolve_interval_s", "keepalive_ttl_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SampleStreamConfig.{name} must be > 0, got {getattr(self, name)!r}")


def approx_nbytes(obj: Any, depth: int = 0) -> int:
    """A cheap estimate of the encoded size of `obj`, used only to decide when to flush a batch."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, (bytes, bytearray, str)):
        return len(obj)
    if depth > 3:
        return 64
    if isinstance(obj, dict):
        return sum(approx_nbytes(value, depth + 1) + 8 for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(approx_nbytes(value, depth + 1) for value in obj) + len(obj)
    nbytes = getattr(obj, "nbytes", None)
    return nbytes if isinstance(nbytes, int) else 8
