"""The unit of training data: one math problem with its ground-truth answer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    uid: str
    """Stable identifier, unique within a dataset (for example `train-000042` or `gsm8k.jsonl:17`)."""
    prompt: str
    """The text the model continues."""
    answer: str
    """The ground-truth final answer, as the verifier compares it (no `\\boxed{}` around it)."""
