"""Streams of the message bus: the inference stream (DEALER-ROUTER) and the sample stream (PUSH-PULL).

Each variant takes its addresses, or a NameResolver and a key root (from `zrl.nameresolve.names`),
as arguments; nothing is global.
"""

from __future__ import annotations

from zrl.streams.counters import StreamCounters
from zrl.streams.inference import InferenceStreamConfig, Request
from zrl.streams.inference_base import InferenceClientBase
from zrl.streams.inference_client import InferenceClient, IpInferenceClient, NameResolvingInferenceClient
from zrl.streams.inference_inline import InlineInferenceClient
from zrl.streams.inference_server import InferenceServer, NameResolvingInferenceServer
from zrl.streams.sample import SampleStreamConfig, StreamFullError
from zrl.streams.sample_consumer import IpSampleConsumer, NameResolvingSampleConsumer, SampleConsumer
from zrl.streams.sample_producer import (
    BroadcastSampleProducer,
    IpSampleProducer,
    NameResolvingSampleProducer,
    RoundRobinSampleProducer,
    SampleProducer,
)
from zrl.streams.sockets import SocketConfig

__all__ = [
    "BroadcastSampleProducer",
    "InferenceClient",
    "InferenceClientBase",
    "InferenceServer",
    "InferenceStreamConfig",
    "InlineInferenceClient",
    "IpInferenceClient",
    "IpSampleConsumer",
    "IpSampleProducer",
    "NameResolvingInferenceClient",
    "NameResolvingInferenceServer",
    "NameResolvingSampleConsumer",
    "NameResolvingSampleProducer",
    "Request",
    "RoundRobinSampleProducer",
    "SampleConsumer",
    "SampleProducer",
    "SampleStreamConfig",
    "SocketConfig",
    "StreamCounters",
    "StreamFullError",
]
