"""Every name-service key, built in one place under `{experiment}/{trial}/`.

Keys of one trial all lie in the subtree `trial_root(experiment, trial)`, so two trials never see
each other's names, and clearing a trial is `clear_subtree(trial_root(...))`.
"""

from __future__ import annotations


def _part(value: str | int, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}: {value!r}")
    text = str(value)
    if not text:
        raise ValueError(f"{what} must not be empty")
    if "/" in text:
        raise ValueError(f"{what} {text!r} must not contain '/'")
    if text.startswith("."):
        raise ValueError(f"{what} {text!r} must not start with '.'")
    if "\x00" in text:
        raise ValueError(f"{what} {text!r} must not contain a NUL character")
    return text


def _index(index: int) -> str:
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"worker index must be an int >= 0, got {index!r}")
    return str(index)


def trial_root(experiment: str, trial: str) -> str:
    """Root of every key of one trial."""
    return f"{_part(experiment, 'experiment')}/{_part(trial, 'trial')}"


def worker_id(worker_type: str, index: int) -> str:
    """The id of one worker, "{worker_type}/{index}", as used by `worker_status` and `worker_control`."""
    return f"{_part(worker_type, 'worker type')}/{_index(index)}"


def _check_worker_id(worker_id_: str) -> str:
    if not isinstance(worker_id_, str) or worker_id_.count("/") != 1:
        raise ValueError(f"worker id must look like 'type/index', got {worker_id_!r}")
    worker_type, index = worker_id_.split("/")
    _part(worker_type, f"worker type in worker id {worker_id_!r}")
    if not index.isdigit():
        raise ValueError(f"worker id {worker_id_!r} must end in a non-negative integer index")
    return worker_id_


def controller(experiment: str, trial: str) -> str:
    """The controller's lease: a keepalive name whose absence tells workers that their controller is gone."""
    return f"{trial_root(experiment, trial)}/controller"


def worker_root(experiment: str, trial: str, worker_type: str | None = None) -> str:
    """Subtree of all registered workers, or of the workers of one type."""
    root = f"{trial_root(experiment, trial)}/worker"
    return root if worker_type is None else f"{root}/{_part(worker_type, 'worker type')}"


def worker(experiment: str, trial: str, worker_type: str, index: int) -> str:
    """Registration key of one worker."""
    return f"{worker_root(experiment, trial, worker_type)}/{_index(index)}"


def worker_status(experiment: str, trial: str, worker_id: str) -> str:
    """Status of one worker; `worker_id` is "type/index"."""
    return f"{trial_root(experiment, trial)}/status/{_check_worker_id(worker_id)}"


def worker_control(experiment: str, trial: str, worker_id: str) -> str:
    """Control-channel address of one worker; `worker_id` is "type/index"."""
    return f"{trial_root(experiment, trial)}/control/{_check_worker_id(worker_id)}"


def inference_stream(experiment: str, trial: str, stream: str) -> str:
    """Subtree where the servers of one inference stream register (one subentry per server)."""
    return f"{trial_root(experiment, trial)}/inference_stream/{_part(stream, 'inference stream name')}"


def sample_stream(experiment: str, trial: str, stream: str) -> str:
    """Subtree where the consumers of one sample stream register (one subentry per consumer)."""
    return f"{trial_root(experiment, trial)}/sample_stream/{_part(stream, 'sample stream name')}"


def sample_drops_root(experiment: str, trial: str, stream: str) -> str:
    """Subtree of the drop counts of one sample stream, one entry per producer."""
    return f"{trial_root(experiment, trial)}/sample_drops/{_part(stream, 'sample stream name')}"


def sample_drops(experiment: str, trial: str, stream: str, producer: str) -> str:
    """How many of one producer's samples the consumers of a sample stream dropped; `producer` is "type/index"."""
    return f"{sample_drops_root(experiment, trial, stream)}/{_check_worker_id(producer)}"


def sample_stream_reset(experiment: str, trial: str, stream: str) -> str:
    """The version from which the consumer of a sample stream counts anew: set when a trainer resumes from a
    checkpoint, whatever was posted to it before is gone, and its drop counts start again from zero."""
    return f"{trial_root(experiment, trial)}/sample_stream_reset/{_part(stream, 'sample stream name')}"


def param_version(experiment: str, trial: str, model: str) -> str:
    """Latest published parameter version of one model."""
    return f"{trial_root(experiment, trial)}/param/{_part(model, 'model name')}/version"


def trainer_ddp(experiment: str, trial: str, model: str, *parts: str) -> str:
    """Keys of one model's trainer process group (rendezvous address, ranks, ...)."""
    root = f"{trial_root(experiment, trial)}/trainer_ddp/{_part(model, 'model name')}"
    return "/".join([root, *(_part(p, f"trainer_ddp part {i}") for i, p in enumerate(parts))])
