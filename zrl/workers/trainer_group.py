"""The trainers of one model as a torch.distributed process group: gloo when the model is on the CPU, NCCL when
it is on a GPU.

Rendezvous goes through the name service, on no fixed port: rank 0 listens on a free port of its worker host,
serves a torch `TCPStore` on it and publishes `host:port` under `names.trainer_ddp(experiment, trial, model,
"store")` with a keepalive, so the entry of a rank 0 that died expires; the other ranks wait for that name, join
the store, and torch.distributed sets the group up through it. The rendezvous and every collective wait at most
`timeout_s`: a trainer whose peer died, or never came, fails with an error that says so instead of hanging.

A message from rank 0 to the others (`broadcast`) is any value that `zrl.wire` encodes. It travels as two
broadcasts: an int64 tensor [frame count, total bytes], then one uint8 tensor holding each frame's length (int64,
little-endian) followed by the frames. It is decoded with `zrl.wire.decode`; nothing is unpickled.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from zrl import wire
from zrl.hosts import interface_of
from zrl.nameresolve import NameEntryNotFoundError, NameResolveError, NameResolver

logger = logging.getLogger(__name__)


class TrainerGroupError(RuntimeError):
    """The group could not be formed, or a collective failed: a peer trainer died or stopped answering."""


class TrainerGroup:
    """This process's membership in the trainers' process group; implements `zrl.rl.data_parallel.Collective`."""

    def __init__(self, rank: int, world_size: int, device: torch.device, timeout_s: float,
                 on_close: Callable[[], None]):
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.timeout_s = timeout_s
        self._on_close = on_close

    # ---- Collective ----

    def sum_(self, tensor: torch.Tensor) -> None:
        self._reduce(tensor, dist.ReduceOp.SUM, "summing gradients or metrics")

    def max_(self, tensor: torch.Tensor) -> None:
        self._reduce(tensor, dist.ReduceOp.MAX, "taking the maximum of metrics")

    # ---- messages and weights from rank 0 ----

    def broadcast(self, message: Any = None) -> Any:
        """Rank 0's `message`, on every rank (the others' argument is ignored)."""
        header = torch.zeros(2, dtype=torch.int64)
        payload = b""
        if self.rank == 0:
            frames = [bytes(frame) for frame in wire.encode(message)]
            sizes = np.asarray([len(frame) for frame in frames], dtype="<i8").tobytes()
            payload = sizes + b"".join(frames)
            header = torch.tensor([len(frames), len(payload)], dtype=torch.int64)
        header = self._broadcast_tensor(header, "sending the size of rank 0's message")
        n_frames, n_bytes = (int(v) for v in header.tolist())
        buffer = (torch.frombuffer(bytearray(payload), dtype=torch.uint8) if self.rank == 0
                  else torch.empty(n_bytes, dtype=torch.uint8))
        raw = self._broadcast_tensor(buffer, "sending rank 0's message").numpy().tobytes()
        if self.rank == 0:
            return message
        sizes = np.frombuffer(raw[: 8 * n_frames], dtype="<i8").tolist()
        frames, offset = [], 8 * n_frames
        for size in sizes:
            frames.append(raw[offset : offset + size])
            offset += size
        return wire.decode(frames)

    def broadcast_parameters(self, model: torch.nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers, so all start from the same weights."""
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                tensor.copy_(self._broadcast_tensor(tensor.detach(), "sending rank 0's weights"))

    def close(self) -> None:
        """Leave the group (the peers' next collective then fails at once) and withdraw the rendezvous name."""
        self._on_close()

    # ---- plumbing ----

    def _reduce(self, tensor: torch.Tensor, op: Any, what: str) -> None:
        on_device = tensor.to(self.device)
        self._collective(lambda: dist.all_reduce(on_device, op=op), what)
        if on_device is not tensor:
            tensor.copy_(on_device)

    def _broadcast_tensor(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        on_device = tensor.to(self.device)
        self._collective(lambda: dist.broadcast(on_device, src=0), what)
        return on_device.cpu() if self.device.type != "cpu" else on_device

    def _collective(self, call: Callable[[], Any], what: str) -> None:
        try:
            call()
        except RuntimeError as exc:
            raise TrainerGroupError(
                f"trainer rank {self.rank} of {self.world_size}: {what} failed; a peer trainer died or did not take "
                f"part within {self.timeout_s:g} s: {exc}") from exc


def join_trainer_group(resolver: NameResolver, store_name: str, rank: int, world_size: int, host: str,
                       device: torch.device, timeout_s: float, keepalive_ttl_s: float) -> TrainerGroup:
    """Form the process group of `world_size` trainers with this process as `rank`; returns once all have joined.

    `store_name` is the name-service key of the rendezvous address (rank 0 publishes it, the others read it),
    `host` the address rank 0 listens on, and `device` the model's device, which picks the backend.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"trainer rank {rank} is outside a group of {world_size}")
    timeout = timedelta(seconds=timeout_s)
    if rank == 0:
        store, address = _serve_store(host, world_size, timeout)
        resolver.add(store_name, address, keepalive_ttl=keepalive_ttl_s, replace=True)
        logger.info("trainer group of %d: rendezvous at %s (name %s)", world_size, address, store_name)
    else:
        store = _join_store(resolver, store_name, rank, world_size, timeout)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "gloo":
        _use_interface_of(host)
    device_id = None
    if device.type == "cuda":
        device_id = device if device.index is not None else torch.device("cuda", torch.cuda.current_device())
    try:
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout,
                                device_id=device_id)
    except RuntimeError as exc:
        raise TrainerGroupError(f"trainer rank {rank} of {world_size}: the {backend} process group did not form "
                                f"within {timeout_s:g} s: {exc}") from exc

    def leave() -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
        if rank == 0:
            try:
                resolver.delete(store_name)
            except (NameEntryNotFoundError, NameResolveError):
                pass  # gone already, or the name service is down: its keepalive lapses anyway

    logger.info("joined the %s trainer group as rank %d of %d", backend, rank, world_size)
    return TrainerGroup(rank, world_size, device, timeout_s, leave)


def _serve_store(host: str, world_size: int, timeout: timedelta) -> tuple[dist.TCPStore, str]:
    """A TCPStore served on a free port of `host` only (torch's own would listen on every interface)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.bind((host, 0))
        listener.listen(world_size)
        port = listener.getsockname()[1]
    except OSError:
        listener.close()
        raise
    store = dist.TCPStore(host, port, world_size, is_master=True, timeout=timeout, wait_for_workers=False,
                          master_listen_fd=listener.detach())
    address = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    return store, address


def _join_store(resolver: NameResolver, store_name: str, rank: int, world_size: int,
                timeout: timedelta) -> dist.TCPStore:
    try:
        address = resolver.wait(store_name, timeout.total_seconds())
    except TimeoutError as exc:
        raise TrainerGroupError(
            f"trainer rank {rank} of {world_size}: no rendezvous address under {store_name} within "
            f"{timeout.total_seconds():g} s; trainer rank 0 publishes it once configured (see its log)") from exc
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise TrainerGroupError(f"trainer rank {rank}: {store_name} holds {address!r}, not host:port")
    try:
        return dist.TCPStore(host.strip("[]"), int(port), world_size, is_master=False, timeout=timeout)
    except RuntimeError as exc:
        raise TrainerGroupError(f"trainer rank {rank} of {world_size}: cannot reach the rendezvous at {address} "
                                f"(from {store_name}): {exc}") from exc


def _use_interface_of(host: str) -> None:
    """Make gloo connect over the interface that holds `host`, the address the other trainers reach (by default
    it would take whatever the host name resolves to, which is loopback on many machines)."""
    interface = interface_of(host)
    if interface is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
