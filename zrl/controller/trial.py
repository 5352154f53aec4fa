"""A trial in the name service: its lease (one live controller per trial, the names an earlier run left cleared),
and the control addresses its workers register."""

from __future__ import annotations

import os
import socket
import time

from zrl.config import ExperimentConfig
from zrl.controller.supervisor import WorkerState
from zrl.nameresolve import (
    NameEntryExistsError,
    NameEntryNotFoundError,
    NameResolveError,
    NameResolver,
    names,
)
from zrl.streams.control import ControlClient


class TrialInUseError(RuntimeError):
    """Another live controller runs the same experiment trial."""


def claim_trial(resolver: NameResolver, config: ExperimentConfig) -> None:
    """Take the trial's lease, then clear the names an earlier run of this trial left (they point at dead workers).

    Workers end themselves once the lease lapses: the controller may die by SIGKILL, OOM or with its node.
    """
    experiment, trial = config.experiment, config.trial
    lease = names.controller(experiment, trial)
    lease_ttl = config.timeouts.controller_lease_s / 2
    try:
        resolver.add(lease, f"{socket.gethostname()}:{os.getpid()}", keepalive_ttl=lease_ttl)
    except NameEntryExistsError:
        try:
            holder = resolver.get(lease)
        except NameEntryNotFoundError:
            holder = "that has just ended"
        raise TrialInUseError(
            f"trial {experiment}/{trial} is being run by the controller {holder}; pick another trial=, stop that "
            f"run, or if it died, wait up to {lease_ttl:g} s for its lease to lapse") from None
    for key in resolver.find_subtree(names.trial_root(experiment, trial)):
        if key != lease:
            try:
                resolver.delete(key)
            except NameEntryNotFoundError:
                pass


def connect_registered(resolver: NameResolver, client: ControlClient, config: ExperimentConfig,
                       waiting: dict[str, WorkerState]) -> set[str]:
    """Connect `client` to each worker of `waiting` whose control address is registered; returns their ids. The
    address of a process before a requeue is not taken: its successor replaces the name."""
    connected = set()
    for worker_id, state in sorted(waiting.items()):
        try:
            address = resolver.get(names.worker_control(config.experiment, config.trial, worker_id))
        except NameEntryNotFoundError:
            continue
        if address == state.stale_address:
            continue
        client.connect(worker_id, address)
        state.stale_address, state.address, state.node, state.last_answer = "", address, "", time.monotonic()
        connected.add(worker_id)
    return connected


def control_name_alive(resolver: NameResolver, config: ExperimentConfig, worker_id: str, address: str) -> bool:
    """The worker's control name still holds `address`; an unreachable name service counts as alive (its status
    replies decide)."""
    try:
        return resolver.get(names.worker_control(config.experiment, config.trial, worker_id)) == address
    except NameEntryNotFoundError:
        return False
    except NameResolveError:
        return True


def forget_control_name(resolver: NameResolver, config: ExperimentConfig, worker_id: str) -> None:
    try:
        resolver.delete(names.worker_control(config.experiment, config.trial, worker_id))
    except NameEntryNotFoundError:
        pass
