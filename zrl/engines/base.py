"""The generation engine interface that the TreePO sampler and the policy worker use.

An engine continues a batch of token-id prefixes. Each request asks for at most `max_new_tokens` new tokens; each
result holds the new token ids, the logprob of each sampled token under the engine's weights, whether EOS was
produced (any of the model's EOS ids; it is then the last of `token_ids`), and the policy version of the weights
that produced it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    """Per-request seed; None draws from the engine's generator."""


@dataclass(frozen=True)
class GenerationRequest:
    prefix_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = ""


@dataclass(frozen=True)
class GenerationResult:
    request_id: str
    token_ids: list[int]
    logprobs: list[float]
    """Logprob of each sampled token, same length as `token_ids`."""
    eos: bool
    version: int
    """Policy version of the weights that produced these tokens."""


class Engine(abc.ABC):
    """A generation backend. Implementations: `zrl.engines.hf.HFEngine`, `zrl.engines.vllm.VLLMEngine`."""

    @abc.abstractmethod
    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Continue every request; results come back in request order."""

    @abc.abstractmethod
    def load_weights(self, source: Path | str | dict[str, Any], version: int, *, adopt: bool = False) -> None:
        """Load new weights in place, from a model directory or a state dict, without restarting.

        `adopt`: the engine may keep the state dict's tensors as its own instead of copying them (the caller
        hands them over and must not change them afterwards); an engine that cannot share them copies.
        """

    @property
    @abc.abstractmethod
    def version(self) -> int:
        """The policy version of the loaded weights."""

    @property
    @abc.abstractmethod
    def eos_token_id(self) -> int:
        """The model's EOS id (the first one when it has several)."""

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every id that ends a sequence; generation stops on any of them and reports eos."""
        return (self.eos_token_id,)

    def stats(self) -> dict[str, int]:
        """Counters of the engine's own work for the worker's status (the hf engine: its prefix cache)."""
        return {}

    def close(self) -> None:  # noqa: B027 (an optional hook: engines without resources keep this default)
        """Release the engine's resources."""
