"""The end of a run: bringing the workers' counters to one moment, the summary file and the report printed."""

from __future__ import annotations

import json
import signal
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zrl.config import ExperimentConfig
from zrl.controller.plan import RunPaths
from zrl.controller.report import (
    CURVE_FILE,
    accounting_text,
    plot_learning_curve,
    read_metrics,
    sample_accounting,
    training_table,
)
from zrl.controller.schedulers import Scheduler
from zrl.controller.supervisor import WorkerState
from zrl.nameresolve import NameResolveError, NameResolver, names
from zrl.redact import redact_plain
from zrl.streams.control import ControlClient, ControlReply, ErrorInfo

LOG_TAIL_LINES = 30


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def quiesce(client: ControlClient, worker_ids: list[str], bound_s: float,
            record: Callable[[ControlReply], None]) -> None:
    """Pause the running workers and wait (a bounded time) for their current polls to return, so the final
    counters of all workers describe one moment and the sample accounting can balance."""
    client.request(worker_ids, "pause", timeout=1.0)  # COMPLETED and ERROR workers refuse; that is fine
    deadline = time.monotonic() + bound_s
    while True:
        replies = client.request(worker_ids, "status", timeout=1.0)
        for reply in replies.values():
            if reply.ok:
                record(reply)
        busy = [w for w, r in replies.items() if r.ok and r.result.get("in_poll")]
        if not busy or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def wait_exited(scheduler: Scheduler, timeout: float) -> None:
    """Give workers that were told to exit a moment to leave on their own before they are signalled."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(job.state.finished for job in scheduler.poll().values()):
            return
        time.sleep(0.02)


def write_summary(config: ExperimentConfig, paths: RunPaths, workers: dict[str, WorkerState], code: int,
                  elapsed_s: float, timeline: dict[str, float], accounting: dict[str, Any] | None) -> None:
    summary = {
        "experiment": config.experiment, "trial": config.trial, "exit_code": code,
        "elapsed_s": elapsed_s, "timeline_s": timeline, "sample_accounting": accounting,
        "workers": {w: {"status": s.status, "restarts": s.restarts, "last": s.last_reply,
                        "ended_processes": s.ended_replies}
                    for w, s in workers.items()},
    }
    paths.create()
    paths.summary.write_text(json.dumps(redact_plain(summary), indent=2, default=str))


def finish(config: ExperimentConfig, paths: RunPaths, resolver: NameResolver, workers: dict[str, WorkerState],
           code: int, elapsed_s: float, timeline: dict[str, float], say: Callable[[str], None]) -> None:
    """Once every worker is stopped: clear the trial's names and its key, write the summary, print the report."""
    try:
        resolver.clear_subtree(names.trial_root(config.experiment, config.trial))
    except NameResolveError as exc:
        say(f"warning: could not clear the trial's names: {exc}")
    paths.control_key.unlink(missing_ok=True)  # no worker is left to read it
    accounting = sample_accounting({w: [*s.ended_replies, s.last_reply] for w, s in workers.items()})
    write_summary(config, paths, workers, code, elapsed_s, timeline, accounting)
    try:
        report(paths, accounting, say)
    except Exception:  # noqa: BLE001 - the run is over; a broken report must not change its exit code
        say(f"warning: could not write the end-of-run report:\n{traceback.format_exc().rstrip()}")


def report(paths: RunPaths, accounting: dict[str, Any] | None, say: Callable[[str], None]) -> None:
    """The training table, the learning curve and the sample accounting, where the run produced them."""
    records = read_metrics(paths.root / "metrics.jsonl")
    if records:
        say(training_table(records))
        curve = plot_learning_curve(records, paths.root / CURVE_FILE)
        if curve is not None:
            say(f"learning curve: {curve}")
    if accounting is not None:
        say(accounting_text(accounting))


def failure_report(worker_id: str, reason: str, error: ErrorInfo | None, state: WorkerState, log: Path) -> str:
    """What the run prints about the worker whose failure stops it: where it ran, its error and its log's tail."""
    lines = [f"error: worker {worker_id} failed: {reason}{state.placement}"]
    if error is not None:
        lines.append(f"worker error: {error}")
        if error.traceback:
            lines.append(error.traceback.rstrip())
    lines += [f"last lines of {log}:\n{log_tail(log)}", "stopping the experiment"]
    return "\n".join(lines)


class signals_deferred:
    """Hold SIGINT/SIGTERM/SIGHUP while the controller stops its workers, so a second Ctrl-C cannot leave orphans."""

    def __enter__(self) -> None:
        self._saved: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                self._saved[sig] = signal.signal(sig, signal.SIG_IGN)

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
