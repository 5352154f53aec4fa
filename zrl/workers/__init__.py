"""Worker processes: the `Worker` base (loop, statuses, control handlers) and the worker types.

Run one with `python -m zrl.workers TYPE ...`; worker types are listed in `zrl.workers.registry`.
"""

from zrl.workers.base import PollResult, Worker, WorkerContext, WorkerStatus

__all__ = ["PollResult", "Worker", "WorkerContext", "WorkerStatus"]
