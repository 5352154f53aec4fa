"""Data-parallel training over several trainers, the parts that need no socket: which rows each trainer takes,
and how the trainers' gradients and metric sums combine.

Every trainer holds the whole global batch and computes its advantages (so whitening is over the global batch and
identical everywhere), then trains on its own rows only. Each row's loss is divided by the global batch's
response-token count, so the gradients of the trainers' rows add up to the single-trainer token-mean gradient;
they are summed (not averaged) across trainers, which needs no world-size correction and allows trainers with
different numbers of micro-batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import torch

GRADIENT_BUCKET_ELEMENTS = 1 << 24
"""Most gradient elements summed by one collective call (bounds the extra memory of the flat buffer)."""


class Collective(Protocol):
    """The collectives of a group of trainers: in-place reductions whose result every member receives."""

    rank: int
    world_size: int

    def sum_(self, tensor: torch.Tensor) -> None:
        """Replace `tensor` on every member by the element-wise sum over the members."""

    def max_(self, tensor: torch.Tensor) -> None:
        """Replace `tensor` on every member by the element-wise maximum over the members."""


def split_by_tokens(sizes: Sequence[int], world_size: int, what: str = "trajectories") -> list[list[int]]:
    """The indices of the items (trajectories, or whole trees) that each of `world_size` trainers takes, balanced
    by `sizes` in tokens: largest first, each to the trainer with the fewest tokens so far. Every trainer gets at
    least one item and its indices in ascending order; the result depends only on `sizes`, so every trainer
    computes the same split. `what` names the items in the error for a batch with fewer items than trainers."""
    if world_size < 1:
        raise ValueError(f"world_size={world_size} must be >= 1")
    if len(sizes) < world_size:
        raise ValueError(f"a batch of {len(sizes)} {what} cannot be split over {world_size} trainers (each needs "
                         "at least one); raise prompts_per_step or lower the trainer count")
    tokens = [0] * world_size
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for item in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(world_size), key=lambda r: (tokens[r], len(shares[r]), r))
        shares[rank].append(item)
        tokens[rank] += sizes[item]
    return [sorted(items) for items in shares]


def sum_gradients(model: torch.nn.Module, collective: Collective) -> None:
    """Sum every parameter's gradient over the group, in flat buckets; a missing gradient counts as zeros, so
    every member makes the same collective calls."""
    fill_missing_gradients(model)
    params = [p for p in model.parameters() if p.requires_grad]
    for bucket in _buckets(params, GRADIENT_BUCKET_ELEMENTS):
        flat = torch.cat([p.grad.reshape(-1) for p in bucket])
        collective.sum_(flat)
        offset = 0
        for p in bucket:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n


def fill_missing_gradients(model: torch.nn.Module) -> None:
    """Zero gradients where no pass made one (a batch, or a trainer's share, without a learning trajectory), so
    that AdamW still applies its momentum and every trainer of a group sums the same tensors."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)


def reduce_sums(sums: dict[str, float], collective: Collective, max_keys: Sequence[str] = ()) -> dict[str, float]:
    """`sums` added up over the group, except `max_keys`, whose maximum is taken. Every member must pass the same
    keys (the names are not exchanged)."""
    added = sorted(k for k in sums if k not in max_keys)
    maxed = sorted(k for k in sums if k in max_keys)
    out: dict[str, float] = {}
    for keys, reduce in ((added, collective.sum_), (maxed, collective.max_)):
        if not keys:
            continue
        values = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
        reduce(values)
        out.update(zip(keys, values.tolist(), strict=True))
    return out


def _buckets(params: list[torch.nn.Parameter], max_elements: int) -> Iterator[list[torch.nn.Parameter]]:
    bucket: list[torch.nn.Parameter] = []
    size = 0
    for p in params:
        if bucket and (size + p.numel() > max_elements or p.dtype != bucket[0].dtype
                       or p.device != bucket[0].device):
            yield bucket
            bucket, size = [], 0
        bucket.append(p)
        size += p.numel()
    if bucket:
        yield bucket
