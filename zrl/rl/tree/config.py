"""Configuration of the TreePO tree sampler (symbols as in the TreePO paper: w, l, d, b)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TreeSamplerConfig:
    """How each prompt's tree of trajectories is grown."""

    width: int = 8
    """w: trajectories per prompt; every prompt ends with exactly this many."""
    segment_len: int = 8
    """l: at most this many new tokens per segment (one generation request)."""
    max_depth: int = 6
    """d: at most this many segments per trajectory."""
    branching: int = 2
    """b: branching budget per node, and the number of paths a prompt starts with."""
    response_cap: int | None = None
    """Most response tokens per trajectory; None means max_depth * segment_len."""
    temperature: float = 1.0
    """Sampling temperature sent with every request."""
    top_p: float = 1.0
    """Nucleus sampling threshold sent with every request."""
    require_eos_with_answer: bool = True
    """A \\boxed{} answer finishes a path only together with EOS; False finishes on the answer alone."""
    repetition_stop: bool = False
    """Stop a path whose latest segment repeats a substring (REPETITION_STOPPED)."""
    repetition_substring_chars: int = 32
    """Length in characters of the substring the repetition stop looks for."""
    repetition_count: int = 8
    """Non-overlapping occurrences of one substring in a segment that count as repetition."""
    split: str = "even"
    """How a prompt's child budget is split over its active paths: "even" or "softmax" (over path logprobs)."""
    split_temperature: float = 1.0
    """Temperature of the "softmax" split."""
    random_initial_divergence: bool = False
    """Start each prompt with a random number of paths in [divergence_min, divergence_max] instead of b."""
    divergence_min: int = 2
    """Fewest initial paths under random_initial_divergence."""
    divergence_max: int = 8
    """Most initial paths under random_initial_divergence."""
    mode: str = "tree"
    """"tree" grows trees; "independent" draws w independent full-length samples (the baseline)."""
    seed: int = 0
    """Seed of the sampler's own choices (fallback leaves, cut points, per-request seeds)."""

    def __post_init__(self) -> None:
        errors = []
        for name in ("width", "segment_len", "max_depth", "branching", "repetition_substring_chars",
                     "repetition_count", "divergence_min"):
            if getattr(self, name) < 1:
                errors.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.response_cap is not None and self.response_cap < 1:
            errors.append(f"response_cap={self.response_cap} must be >= 1 or None")
        if self.divergence_max < self.divergence_min:
            errors.append(f"divergence_max={self.divergence_max} must be >= divergence_min={self.divergence_min}")
        if self.split not in ("even", "softmax"):
            errors.append(f"split={self.split!r} must be 'even' or 'softmax'")
        if self.mode not in ("tree", "independent"):
            errors.append(f"mode={self.mode!r} must be 'tree' or 'independent'")
        if self.split_temperature <= 0:
            errors.append(f"split_temperature={self.split_temperature} must be > 0")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            errors.append(f"temperature={self.temperature} must be >= 0 and top_p={self.top_p} in (0, 1]")
        if errors:
            raise ValueError("invalid TreeSamplerConfig: " + "; ".join(errors))

    @property
    def cap(self) -> int:
        """The effective response cap in tokens."""
        return self.response_cap if self.response_cap is not None else self.max_depth * self.segment_len
