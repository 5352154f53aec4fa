"""Settings of the parameter DB."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParamDBConfig:
    """Tuning of how versions are written and watched."""

    max_shard_bytes: int = 512 << 20
    """Largest safetensors shard in bytes; a bigger state dict is split into several shards."""

    write_threads: int = 2
    """Shards written at the same time by one push (the kernel copies into the page cache in parallel)."""

    poll_interval: float = 0.05
    """Seconds between checks of the name service (or of the `latest` file) in `wait_newer`."""

    disk_poll_interval: float = 1.0
    """Seconds between checks of the `latest` file in `wait_newer` when a name service is also watched."""

    read_retries: int = 3
    """Times a read of `latest` or a tag is retried when garbage collection removes the version underneath it."""

    fsync: bool = True
    """Flush every file and directory to stable storage before a version becomes visible."""

    def __post_init__(self) -> None:
        if self.max_shard_bytes <= 0:
            raise ValueError(f"ParamDBConfig.max_shard_bytes must be positive, got {self.max_shard_bytes}")
        if self.poll_interval <= 0 or self.disk_poll_interval <= 0:
            raise ValueError("ParamDBConfig.poll_interval and disk_poll_interval must be positive")
        if self.write_threads < 1:
            raise ValueError(f"ParamDBConfig.write_threads must be >= 1, got {self.write_threads}")
        if self.read_retries < 0:
            raise ValueError(f"ParamDBConfig.read_retries must be >= 0, got {self.read_retries}")
