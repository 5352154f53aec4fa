"""A key/value cache for decoding that reserves room for the tokens still to come.

transformers' DynamicCache concatenates every layer's whole cache with each new token, so a decoding step copies
all the keys and values of the batch; on CPU that copy costs as much as the attention itself. Here each layer
keeps buffers with room for the tokens a batch may still decode, writes a step's keys and values in place, and
hands the model views of the filled part.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class ReservedLayer(DynamicLayer):
    """A DynamicLayer whose `keys` and `values` are views of larger buffers: `room` more tokens fit before a copy."""

    def __init__(self, room: int):
        super().__init__()
        self.room = room
        self.length = 0
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    @classmethod
    def filled(cls, key_buffer: torch.Tensor, value_buffer: torch.Tensor, length: int, room: int) -> ReservedLayer:
        """A layer holding the first `length` positions of the given buffers ([batch, heads, capacity, head dim])."""
        layer = cls(room)
        layer.lazy_initialization(key_buffer, value_buffer)
        layer.key_buffer, layer.value_buffer, layer.length = key_buffer, value_buffer, length
        layer._expose()
        return layer

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self.key_buffer is None or end > self.key_buffer.shape[-2]:
            self._grow(key_states, value_states, end + self.room)
        self.key_buffer[..., self.length : end, :] = key_states
        self.value_buffer[..., self.length : end, :] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.key_buffer is not None:
            self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
            self._expose()

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, capacity: int) -> None:
        batch, heads, _, key_dim = key_states.shape
        keys = key_states.new_empty((batch, heads, capacity, key_dim))
        values = value_states.new_empty((batch, heads, capacity, value_states.shape[-1]))
        if self.key_buffer is not None:
            keys[..., : self.length, :] = self.key_buffer[..., : self.length, :]
            values[..., : self.length, :] = self.value_buffer[..., : self.length, :]
        self.key_buffer, self.value_buffer = keys, values

    def _expose(self) -> None:
        self.keys = self.key_buffer[..., : self.length, :]
        self.values = self.value_buffer[..., : self.length, :]


def reserved_cache(room: int, layers: list[ReservedLayer] | None = None) -> DynamicCache:
    """A DynamicCache of ReservedLayers: the given filled ones, else empty ones made as the model first writes."""
    cache = DynamicCache()
    if layers is not None:
        cache.layers = list(layers)
    cache.layer_class_to_replicate = lambda: ReservedLayer(room)
    return cache
