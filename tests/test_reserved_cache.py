"""The reserved key/value cache: the same keys and values as transformers' DynamicCache, written in place."""

import torch
from transformers import DynamicCache

from zrl.engines.reserved_cache import ReservedLayer, reserved_cache


def steps(batch: int = 3, heads: int = 2, dim: int = 4, lengths: tuple[int, ...] = (5, 1, 1, 1, 1, 1, 1)):
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, heads, n, dim, generator=generator), torch.randn(batch, heads, n, dim,
                                                                                generator=generator))
            for n in lengths]


def test_updates_match_dynamic_cache_and_write_in_place_until_the_room_is_used():
    reserved, dynamic = reserved_cache(room=3), DynamicCache()
    buffers = []
    for keys, values in steps():
        got = reserved.update(keys, values, 0)
        want = dynamic.update(keys, values, 0)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        buffers.append(reserved.layers[0].key_buffer.data_ptr())
    # 5 tokens + room 3 = capacity 8; the 9th token (step 5) needed a new buffer of 9 + 3, then in place again.
    assert buffers[0] == buffers[1] == buffers[2] == buffers[3]
    assert buffers[4] != buffers[3] and buffers[4] == buffers[5] == buffers[6]
    assert reserved.get_seq_length() == dynamic.get_seq_length() == 11


def test_selecting_rows_keeps_their_keys_and_room():
    reserved, dynamic = reserved_cache(room=4), DynamicCache()
    for keys, values in steps()[:2]:
        reserved.update(keys, values, 0)
        dynamic.update(keys, values, 0)
    rows = torch.tensor([2, 0])
    reserved.batch_select_indices(rows)
    dynamic.batch_select_indices(rows)
    keys, values = steps(batch=2)[3]
    got, want = reserved.update(keys, values, 0), dynamic.update(keys, values, 0)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert reserved.layers[0].key_buffer.shape[-2] == 5 + 4  # sized at the first update, never regrown


def test_a_filled_layer_starts_from_given_buffers():
    keys, values = torch.randn(2, 1, 6, 4), torch.randn(2, 1, 6, 4)
    cache = reserved_cache(room=2, layers=[ReservedLayer.filled(keys, values, length=4, room=2)])
    assert cache.get_seq_length() == 4
    new_keys, new_values = torch.randn(2, 1, 1, 4), torch.randn(2, 1, 1, 4)
    got_keys, got_values = cache.update(new_keys, new_values, 0)
    assert torch.equal(got_keys, torch.cat([keys[:, :, :4], new_keys], dim=-2))
    assert torch.equal(got_values, torch.cat([values[:, :, :4], new_values], dim=-2))
    assert got_keys.data_ptr() == keys.data_ptr()  # written into the given buffer
