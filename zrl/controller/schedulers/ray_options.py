"""Checks of the ray scheduler's options and of a group's Ray placement, before anything starts (no Ray import)."""

from __future__ import annotations

import re

from zrl.config import RayOptions, RayPlacement

_ADDRESS = re.compile(r"(?:ray://)?(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9._-]+):(?P<port>\d{1,5})\Z")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*=[A-Za-z0-9._!-]*\Z")


def address_host_port(address: str) -> tuple[str, int]:
    """The host and port of a host:port or ray://host:port address; ValueError for anything else."""
    match = _ADDRESS.match(address)
    if match is None or not 0 < int(match["port"]) < 65536:
        raise ValueError(f"{address!r} is not auto, host:port or ray://host:port")
    return match["host"].strip("[]"), int(match["port"])


def ray_option_errors(options: RayOptions) -> list[str]:
    """Every problem of the Ray options, each as 'field: problem'."""
    errors = []
    if options.address != "auto":
        try:
            address_host_port(options.address)
        except ValueError as error:
            errors.append(f"address: {error}")
    if not options.namespace or any(ch.isspace() for ch in options.namespace):
        errors.append(f"namespace: {options.namespace!r} must be a non-empty name without spaces")
    if not options.poll_interval_s >= 0:
        errors.append(f"poll_interval_s: must be >= 0, got {options.poll_interval_s}")
    return errors


def ray_placement_errors(placement: RayPlacement) -> list[str]:
    """Every problem of a group's Ray placement, each as 'field: problem'."""
    errors = []
    if placement.node_id and not re.fullmatch(r"[0-9a-f]{56}", placement.node_id):
        errors.append(f"node_id: {placement.node_id!r} is not a Ray node id (56 hex digits, as `ray list nodes` "
                      "prints them)")
    errors += [f"labels: entry {label!r} is not key=value" for label in placement.labels if not _LABEL.match(label)]
    if placement.resource and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.:-]*", placement.resource):
        errors.append(f"resource: {placement.resource!r} is not a resource name")
    if placement.strategy and (placement.node_id or placement.labels):
        errors.append(f"strategy: {placement.strategy} reserves the group's nodes as a placement group, which does "
                      "not take node_id or labels; give one or the other")
    return errors
