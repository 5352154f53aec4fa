"""Turning what a trainer hands over (a module or a state dict) into unique CPU tensors grouped into shards."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def state_dict_of(source: object) -> dict[str, torch.Tensor]:
    """The tensors of a `torch.nn.Module` or a mapping of names to tensors; anything else is a TypeError."""
    if isinstance(source, torch.nn.Module):
        items = source.state_dict()
    elif isinstance(source, Mapping):
        items = source
    else:
        raise TypeError(f"push expects a torch.nn.Module or a dict of tensors, got {type(source).__name__}")
    state: dict[str, torch.Tensor] = {}
    for name, tensor in items.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise TypeError(f"state dict key {name!r} is not a usable tensor name")
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        state[name] = tensor
    return state


def split_aliases(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop tensors that are the very same view of storage as an earlier one (tied weights).

    Safetensors refuses shared storage, and `save_pretrained` stores a tied weight once under its first name
    (`model.embed_tokens.weight` before `lm_head.weight`); the model re-ties the rest on load. The mapping
    `{dropped name: kept name}` goes into the manifest so `get` can restore the full state dict.
    """
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in state.items():
        if tensor.numel() == 0 or tensor.device.type == "meta":
            unique[name] = tensor
            continue
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tuple(tensor.stride()), tensor.dtype)
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            unique[name] = tensor
    return unique, aliases


def to_cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors (copies only where needed)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if tensor.device.type == "meta":
            raise ValueError(f"tensor {name!r} is on the meta device and has no data to store")
        out[name] = tensor.detach().to("cpu").contiguous()
    return out


def plan_shards(state: dict[str, torch.Tensor], max_shard_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Group tensors, in order, into shards of at most `max_shard_bytes` (a larger tensor gets a shard alone)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def shard_filenames(count: int) -> list[str]:
    """File names `transformers` expects: one `model.safetensors`, or numbered shards plus an index."""
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{index:05d}-of-{count:05d}.safetensors" for index in range(1, count + 1)]


SHARD_INDEX = "model.safetensors.index.json"
