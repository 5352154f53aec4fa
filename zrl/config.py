"""Experiment configuration: the frozen dataclasses an experiment file builds and `key=value` overrides change.

Every default lives here, once. Each field carries a one-line docstring that `python -m zrl.controller --help`
shows. Worker types define their own frozen config dataclasses; a group's `config` holds an instance of its type's
class (see `zrl.workers.registry`). This module sits below the workers and the controller, so both may import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal, get_args, get_origin, get_type_hints

NAME_RESOLVE_ENV = "ZRL_NAME_RESOLVE"
"""Environment variable that carries the name service URL to a worker (kept out of argv: it may hold a password)."""

NAME_RESOLVE_PASSWORD_ENV = "ZRL_NAME_RESOLVE_PASSWORD"
"""Environment variable the controller takes the name service's password from, when neither `name_resolve` nor
`name_resolve_password_file` gives one."""

PARENT_PID_ENV = "ZRL_PARENT_PID"
"""Environment variable with the pid of a local worker's controller; the worker exits soon after that process dies."""

RestartPolicy = Literal["never", "on_failure"]
ResumePolicy = Literal["never", "auto"]
SchedulerName = Literal["local", "slurm", "ray"]
CurveSetting = Literal["off", "on"]


@dataclass(frozen=True)
class Resources:
    cpus: int = 1
    """CPU cores per worker."""
    memory_mb: int = 1024
    """Memory per worker in MiB."""
    gpus: int = 0
    """GPUs per worker."""


@dataclass(frozen=True)
class SlurmOptions:
    partition: str = ""
    """Slurm partition (empty: the cluster's default)."""
    time_limit: str = ""
    """Job time limit as sbatch takes it, e.g. 04:00:00 (empty: the partition's default)."""
    account: str = ""
    """Slurm account to charge (empty: the user's default)."""
    extra_sbatch_lines: tuple[str, ...] = ()
    """Extra lines copied into every sbatch script, e.g. '#SBATCH --qos=high'."""
    container_image: str = ""
    """Container image for srun --container-image (pyxis); empty runs on the host."""
    container_mounts: str = ""
    """srun --container-mounts value, used with container_image."""
    poll_interval_s: float = 2.0
    """Seconds between squeue polls."""


@dataclass(frozen=True)
class SlurmPlacement:
    """Where Slurm may put one worker group's job (scheduler=slurm); rendered into that group's sbatch script only."""

    nodelist: str = ""
    """Nodes the job must include, as sbatch --nodelist takes them (e.g. gpu[01-02])."""
    exclude: str = ""
    """Nodes the job may not use (sbatch --exclude)."""
    constraint: str = ""
    """Node features the job needs (sbatch --constraint, e.g. a100&ib)."""
    gres: str = ""
    """Generic resources per node (sbatch --gres, e.g. gpu:4); per-worker GPUs are resources.gpus."""
    exclusive: bool = False
    """Take whole nodes, shared with no other job (sbatch --exclusive)."""
    ntasks_per_node: int = 0
    """Workers per node (sbatch --ntasks-per-node; 1 spreads the group one worker per node; 0: Slurm's choice)."""
    extra_sbatch_lines: tuple[str, ...] = ()
    """Extra lines for this group's sbatch script only, after slurm.extra_sbatch_lines (e.g. '#SBATCH --qos=high')."""


RayStrategy = Literal["", "pack", "spread", "strict_pack", "strict_spread"]


@dataclass(frozen=True)
class RayOptions:
    address: str = "auto"
    """The Ray cluster: 'auto' (the cluster this machine belongs to, or $RAY_ADDRESS), host:port of its head (GCS),
    or ray://host:port (Ray Client, from a machine outside the cluster)."""
    namespace: str = "zrl"
    """Ray namespace of the run's actors."""
    poll_interval_s: float = 1.0
    """Seconds between polls of the workers' actors."""


@dataclass(frozen=True)
class RayPlacement:
    """Where Ray may put one worker group's workers (scheduler=ray), in the shape of the Slurm placement."""

    node_id: str = ""
    """The Ray node id (hex) every worker of the group must run on."""
    labels: tuple[str, ...] = ()
    """Node labels the workers need, as key=value entries (nodes get them with `ray start --labels`)."""
    resource: str = ""
    """A custom resource the nodes must have (`ray start --resources='{"name": n}'`); each worker takes 0.001."""
    strategy: RayStrategy = ""
    """How the group's workers share nodes: pack, spread, strict_pack (one node) or strict_spread (one node each),
    by a placement group that reserves the group's resources; empty: Ray's default placement, worker by worker."""


@dataclass(frozen=True)
class WorkerGroupConfig:
    type: str = ""
    """Worker type: a name from zrl.workers.registry or a dotted path 'package.module:Class'."""
    count: int = 1
    """Number of workers in the group."""
    resources: Resources = field(default_factory=Resources)
    """Resources of each worker of the group."""
    restart: RestartPolicy = "never"
    """What a failed worker gets: 'never' stops the experiment, 'on_failure' relaunches and reconfigures it."""
    max_restarts: int = 3
    """Restarts allowed per worker with restart=on_failure; one more failure stops the experiment."""
    restart_backoff_s: float = 1.0
    """Seconds before a failed worker is relaunched; doubled for each further restart of that worker (at most 60 s,
    or this value if larger)."""
    max_failed: int = 0
    """Workers of the group that may fail for good (beyond their restarts) while the experiment goes on without
    them, such as one of several policy workers; one more stops it."""
    after: tuple[str, ...] = ()
    """Groups configured and started before this one (for example the servers a client connects to)."""
    slurm: SlurmPlacement = field(default_factory=SlurmPlacement)
    """Where Slurm places this group (scheduler=slurm): nodes, features, whole nodes, workers per node."""
    ray: RayPlacement = field(default_factory=RayPlacement)
    """Where Ray places this group (scheduler=ray): a node, node labels, a custom resource, pack or spread."""
    config: Any = None
    """The worker type's own config dataclass (None: that class's defaults)."""


@dataclass(frozen=True)
class ControllerTimeouts:
    register_s: float = 60.0
    """Seconds to wait for a launched worker to register its control address."""
    request_s: float = 10.0
    """Seconds to wait for a worker's reply to a control request (configure may take this long)."""
    status_interval_s: float = 0.5
    """Seconds between status polls of every worker."""
    lost_after_s: float = 5.0
    """A worker that has not answered a status request for this long is LOST."""
    poll_stall_s: float = 600.0
    """A RUNNING worker whose _poll has not returned for this long is LOST, after its stacks are written to its log,
    and a worker PAUSED this long without a resume fails (0: never; keep it above the longest legitimate poll, such
    as a training step)."""
    stop_s: float = 10.0
    """Seconds a worker gets to exit after 'exit' before it is killed."""
    keepalive_ttl_s: float = 5.0
    """Keepalive TTL of each worker's control-address name; its expiry marks the worker LOST."""
    max_run_s: float = 0.0
    """Stop the experiment with an error after this many seconds (0: no limit)."""
    controller_lease_s: float = 60.0
    """Workers exit once their controller's lease in the name service has lapsed for this long (a controller
    killed by SIGKILL, OOM or a lost node), so no Slurm job outlives its controller by much more."""
    exit_grace_s: float = 10.0
    """Seconds a worker whose controller is gone gets to exit cleanly before it dumps its stacks and ends itself."""


@dataclass(frozen=True)
class SecurityConfig:
    curve: CurveSetting = "on"
    """ZeroMQ CURVE on every socket of the run (inference, sample and control): encrypted, and only processes
    holding the trial's key connect; 'off' leaves the data streams open to anyone who reaches their ports."""


@dataclass(frozen=True)
class ExperimentConfig:
    experiment: str = ""
    """Experiment name: the first part of every name-service key and of the run directory."""
    trial: str = ""
    """Trial name (empty: a timestamp and a random suffix, such as 20250101-120000-3fa2c1)."""
    resume: ResumePolicy = "never"
    """'auto': continue the trial named by `trial` in its existing run directory, from its last checkpoint
    (metrics are appended); 'never': a new trial."""
    name_resolve: str = ""
    """Name service URL: file:///dir, redis://host:port/db (empty: a file service inside the run directory). Shown
    and stored with its password masked; better give the password by name_resolve_password_file or
    $ZRL_NAME_RESOLVE_PASSWORD, which keep it off the command line."""
    name_resolve_password_file: str = ""
    """File whose first line is the name service's password (Redis AUTH), used when name_resolve holds none."""
    scheduler: SchedulerName = "local"
    """How workers are launched: 'local' (subprocesses), 'slurm' (sbatch jobs) or 'ray' (processes owned by Ray
    actors on a Ray cluster)."""
    run_root: str = "runs"
    """Directory that holds runs/{experiment}/{trial}/ (resolved config, worker logs, summary)."""
    worker_host: str = "127.0.0.1"
    """Address workers bind their sockets to and advertise; 'auto' takes each node's own non-loopback address
    (clusters; a loopback address is refused for Slurm partitions of several nodes)."""
    done_when: tuple[str, ...] = ()
    """Groups whose workers all reaching COMPLETED ends the run; the other groups are then stopped."""
    progress_interval_s: float = 2.0
    """Seconds between progress lines on the terminal (0: none)."""
    timeouts: ControllerTimeouts = field(default_factory=ControllerTimeouts)
    """Controller waits and failure-detection bounds."""
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    """Options of the slurm scheduler."""
    ray: RayOptions = field(default_factory=RayOptions)
    """Options of the ray scheduler."""
    security: SecurityConfig = field(default_factory=SecurityConfig)
    """Protection of the run's sockets."""
    workers: dict[str, WorkerGroupConfig] = field(default_factory=dict)
    """Worker groups by name."""
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Short override keys, each setting every dotted key it lists (e.g. 'model.path' sets the model of every
    worker group); defined by the experiment file."""


def to_plain(config: Any) -> Any:
    """A config dataclass tree as plain dicts, lists and scalars (msgpack- and JSON-able)."""
    if is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_plain(getattr(config, f.name)) for f in fields(config)}
    if isinstance(config, dict):
        return {str(key): to_plain(value) for key, value in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_plain(value) for value in config]
    return config


def from_plain(cls: type, data: Any, where: str = "config") -> Any:
    """Rebuild a config dataclass of type `cls` from `to_plain` output; unknown keys are an error naming them."""
    if not isinstance(data, dict):
        raise TypeError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TypeError(f"{where}: unknown keys {unknown} for {cls.__name__}; allowed: {', '.join(sorted(known))}")
    return cls(**{name: _from_plain_value(hints[name], value, f"{where}.{name}") for name, value in data.items()})


def _from_plain_value(tp: Any, value: Any, where: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if isinstance(tp, type) and is_dataclass(tp):
        return from_plain(tp, value, where)
    if origin is tuple and isinstance(value, (list, tuple)):
        item = args[0] if args else Any
        return tuple(_from_plain_value(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict and isinstance(value, dict):
        item = args[1] if len(args) == 2 else Any
        return {k: _from_plain_value(item, v, f"{where}.{k}") for k, v in value.items()}
    return value
