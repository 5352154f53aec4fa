"""Key/value tensors of token prefixes, kept for reuse: an LRU bounded by the number of tokens it holds.

An entry maps a token sequence to the key and value tensors that every attention layer computed for it (one row,
positions 0..n-1, keys after their rotary embedding). A request that continues a cached sequence needs only its
remaining tokens computed: the children of a tree node continue from their parent's entry. Entries belong to one
set of weights; the engine clears the cache when it loads others.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

LayerKV = tuple[torch.Tensor, torch.Tensor]
"""One layer's keys and values of one sequence, each [heads, tokens, head_dim]."""


@dataclass
class PrefixCacheStats:
    """What the prefix cache saved, counted since the engine started."""

    hits: int = 0
    """Requests whose whole prefix was cached already (by an earlier call, or an earlier row of the same call)."""
    misses: int = 0
    """Requests whose prefix had to be computed, in full or from a shorter cached prefix."""
    reused_tokens: int = 0
    """Prefix tokens whose keys and values came from the cache."""
    computed_tokens: int = 0
    """Prefix tokens computed (prefill)."""
    evicted_entries: int = 0
    """Entries dropped to stay within the token budget."""
    clears: int = 0
    """Times the whole cache was dropped (new weights)."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class PrefixKVCache:
    """Cached prefixes, least recently used first out once they hold more than `capacity_tokens` tokens."""

    def __init__(self, capacity_tokens: int):
        if capacity_tokens < 1:
            raise ValueError(f"prefix cache capacity must be >= 1 token, got {capacity_tokens}")
        self.capacity_tokens = capacity_tokens
        self._entries: OrderedDict[tuple[int, ...], list[LayerKV]] = OrderedDict()
        self._lengths: Counter[int] = Counter()
        self.tokens = 0
        self.stats = PrefixCacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, ids: tuple[int, ...]) -> list[LayerKV] | None:
        """The entry of exactly `ids`, marked as recently used; None when it is not cached."""
        entry = self._entries.get(ids)
        if entry is not None:
            self._entries.move_to_end(ids)
        return entry

    def longest_prefix(self, ids: Sequence[int]) -> tuple[int, list[LayerKV] | None]:
        """The longest cached prefix of `ids` (possibly all of it): its length and its entry, or (0, None)."""
        for length in sorted(self._lengths, reverse=True):
            if length <= len(ids):
                entry = self.get(tuple(ids[:length]))
                if entry is not None:
                    return length, entry
        return 0, None

    def put(self, ids: tuple[int, ...], kv: list[LayerKV]) -> None:
        """Keep `kv` as the entry of `ids` (tensors the cache owns from now on); an entry larger than the whole
        budget is not kept."""
        if not ids or len(ids) > self.capacity_tokens:
            return
        if ids in self._entries:
            self._entries.move_to_end(ids)
            return
        self._entries[ids] = kv
        self._lengths[len(ids)] += 1
        self.tokens += len(ids)
        while self.tokens > self.capacity_tokens:
            self._drop_oldest()

    def clear(self) -> None:
        if self._entries:
            self.stats.clears += 1
        self._entries.clear()
        self._lengths.clear()
        self.tokens = 0

    def _drop_oldest(self) -> None:
        ids, _ = self._entries.popitem(last=False)
        self._lengths[len(ids)] -= 1
        if not self._lengths[len(ids)]:
            del self._lengths[len(ids)]
        self.tokens -= len(ids)
        self.stats.evicted_entries += 1
