"""The Worker base class: it owns the loop, the statuses and the control handlers; subclasses own the work.

A subclass sets `config_class` (a frozen dataclass) and implements `_configure(config)` and
`_poll() -> PollResult`; optionally `_stats()` (counters shown in status replies) and `_close()`.

Lifecycle, driven by the controller over the control channel (`zrl.streams.control`)::

    launched -> READY --configure--> READY (configured) --start--> RUNNING <--pause/resume--> PAUSED
    RUNNING --_poll returns done--> COMPLETED;  an exception in _configure or _poll -> ERROR;  exit -> process ends

The control socket is served by its own thread, so `status`, `pause`, `resume` and `exit` are answered at once,
even during a long `_poll`; pause and exit take effect when that `_poll` returns. `configure` and `start` run
user code and are executed by the main thread between polls. After an error the worker keeps serving control,
so the controller can read the error (type, message, traceback) from `status` before it sends `exit`. Only requests
signed with the trial's key (`WorkerContext.control_key`) are taken; refused ones are counted under `control` in
every status reply. With `WorkerContext.curve`, the control socket, and every stream a worker type opens with it,
lets in only peers holding the trial's CURVE keys.

A status reply carries the worker's counters: its polls, samples and batches, what `_stats()` returns, and under
`control` what its control socket dropped as malformed (`garbage.<kind>`).

Names (keepalive entries, deleted at exit): the control address under `names.worker_control`, and the current
status under `names.worker_status`, which the main loop republishes whenever the status changes.
"""

from __future__ import annotations

import enum
import logging
import os
import queue
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from zrl.config import from_plain
from zrl.nameresolve import NameEntryNotFoundError, NameResolveError, NameResolver, names
from zrl.streams.control import ControlRequest, ControlServer, ErrorInfo
from zrl.streams.control_auth import ControlKey
from zrl.streams.curve import CurveKeys
from zrl.workers.drills import drill_for


class CommandRejected(RuntimeError):
    """A control command that is not allowed in the worker's current status; the status does not change."""


class WorkerStatus(str, enum.Enum):
    READY = "READY"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    ERROR = "ERROR"
    LOST = "LOST"
    """Never reported by a worker: the controller's verdict when its name expired or it stopped answering."""


@dataclass(frozen=True)
class PollResult:
    sample_count: int = 0
    """Samples this poll produced or consumed."""
    batch_count: int = 0
    """Batches (requests, training steps, ...) this poll handled."""
    done: bool = False
    """The worker finished its work: it becomes COMPLETED and `_poll` is not called again."""


@dataclass(frozen=True)
class WorkerContext:
    """Who and where a worker is; given to it explicitly by its launcher."""

    experiment: str
    trial: str
    group: str
    index: int
    host: str = "127.0.0.1"
    """Address the control socket binds to and advertises."""
    keepalive_ttl_s: float = 5.0
    """TTL of the control-address name; the name expires this long after the process dies."""
    group_size: int = 1
    """Workers in this worker's group (for sharding work by index)."""
    run_dir: str = ""
    """The run directory `{run_root}/{experiment}/{trial}` for files the worker keeps (metrics, weights); empty:
    the current directory."""
    control_key: ControlKey | None = None
    """The trial's key: the worker takes only control requests signed with it. Required by `Worker.run`."""
    curve: CurveKeys | None = None
    """The trial's CURVE keys (security.curve=on): the control socket uses them, and worker types pass them to the
    streams they open; None: plain sockets."""

    @property
    def worker_id(self) -> str:
        return names.worker_id(self.group, self.index)


IDLE_SLEEP_S = 0.001
"""Pause after a poll that did no work, so an idle worker does not spin a core."""
CONTROL_POLL_S = 0.05


class Worker:
    """Base of every worker type."""

    config_class: ClassVar[type] = type(None)

    def __init__(self, context: WorkerContext, name_resolver: NameResolver):
        self.context = context
        self.name_resolver = name_resolver
        self.logger = logging.getLogger(f"zrl.worker.{context.worker_id}")
        self.config: Any = None
        self.incarnation = f"{context.worker_id}#{secrets.token_hex(4)}"
        """Names this process of the worker (a relaunched worker gets a new one); producers stamp it on their samples
        and report it under `accounting`, so the sample accounting tells samples lost with a process that ended
        from those in flight (see zrl.controller.report)."""
        self._lock = threading.Lock()
        self._status = WorkerStatus.READY
        self._error: ErrorInfo | None = None
        self._exit = threading.Event()
        self._main_requests: queue.Queue[ControlRequest | None] = queue.Queue()
        self._replies: queue.Queue[tuple[ControlRequest, dict[str, Any] | None, ErrorInfo | None]] = queue.Queue()
        self._polls = 0
        self._samples = 0
        self._batches = 0
        self._last_poll = time.monotonic()
        self._in_poll = False
        self._started_at: float | None = None
        self._control: ControlServer | None = None
        self._published: WorkerStatus | None = None
        self._drill = drill_for(context.worker_id, os.environ)
        self._publish_failing = False

    # ---- subclass hooks ----

    def _configure(self, config: Any) -> None:
        """Set the worker up from its config dataclass (open streams, load models, ...)."""

    def _poll(self) -> PollResult:
        raise TypeError(f"{type(self).__name__} must implement _poll()")

    def _stats(self) -> dict[str, Any]:
        """Counters reported with every status reply (msgpack-able scalars)."""
        return {}

    def _close(self) -> None:
        """Release what `_configure` opened; called once when the worker exits."""

    # ---- public ----

    @property
    def status(self) -> WorkerStatus:
        return self._status

    @property
    def control_name(self) -> str:
        return names.worker_control(self.context.experiment, self.context.trial, self.context.worker_id)

    @property
    def status_name(self) -> str:
        return names.worker_status(self.context.experiment, self.context.trial, self.context.worker_id)

    def request_exit(self) -> None:
        """Ask the loop to end; safe to call from a signal handler (the loop notices within CONTROL_POLL_S)."""
        self._exit.set()

    def run(self) -> int:
        """Register, serve control and poll until `exit`; returns the process exit code (0, or 1 after an error)."""
        if self.context.control_key is None:
            raise ValueError(f"worker {self.context.worker_id} has no control key (WorkerContext.control_key): it "
                             "would take no command, as only requests signed with the trial's key are taken")
        self._control = ControlServer(self.context.trial, self.context.worker_id, self.context.host,
                                      key=self.context.control_key, curve=self.context.curve)
        control_thread = threading.Thread(target=self._serve_control, name="control", daemon=True)
        control_thread.start()
        self.name_resolver.add(self.control_name, self._control.address,
                               keepalive_ttl=self.context.keepalive_ttl_s, replace=True)
        self.logger.info("registered control address %s as %s", self._control.address, self.control_name)
        try:
            self._loop()
        finally:
            self._shutdown(control_thread)
        return 1 if self._status == WorkerStatus.ERROR else 0

    # ---- main thread ----

    def _loop(self) -> None:
        while not self._exit.is_set():
            self._publish_status()
            if self._status == WorkerStatus.RUNNING:
                self._drain_main_requests(block=False)
                if self._status == WorkerStatus.RUNNING and not self._exit.is_set():
                    self._poll_once()
            else:
                self._drain_main_requests(block=True)

    def _poll_once(self) -> None:
        self._in_poll = True
        try:
            if self._drill is not None:
                self._drill.run_if_due(self._batches, self.logger)
            result = self._poll()
        except Exception as exc:  # noqa: BLE001 - any failure of the work is reported, never swallowed
            self._fail(exc, "_poll")
            return
        finally:
            self._in_poll = False
        self._last_poll = time.monotonic()
        self._polls += 1
        self._samples += result.sample_count
        self._batches += result.batch_count
        if result.done:
            with self._lock:
                if self._status == WorkerStatus.RUNNING:
                    self._status = WorkerStatus.COMPLETED
            self.logger.info("completed after %d polls, %d samples", self._polls, self._samples)
        elif result.sample_count == 0 and result.batch_count == 0:
            time.sleep(IDLE_SLEEP_S)

    def _drain_main_requests(self, block: bool) -> None:
        try:
            request = self._main_requests.get(timeout=CONTROL_POLL_S) if block else self._main_requests.get_nowait()
        except queue.Empty:
            return
        if request is None:
            return
        try:
            result = self._configure_request(request) if request.command == "configure" else self._start_request()
        except CommandRejected as exc:
            self._replies.put((request, None, ErrorInfo.from_exception(exc)))
            return
        except Exception as exc:  # noqa: BLE001 - the error goes back to the controller
            self._fail(exc, request.command)
            self._replies.put((request, None, self._error))
            return
        self._replies.put((request, result, None))

    def _configure_request(self, request: ControlRequest) -> dict[str, Any]:
        if self._status not in (WorkerStatus.READY,) or self._started_at is not None:
            raise CommandRejected(f"configure is only allowed before start; worker is {self._status.value}")
        payload = request.payload
        if not isinstance(payload, dict) or "config" not in payload:
            raise CommandRejected("configure takes a payload {'config': the worker config as plain values}")
        config = from_plain(self.config_class, payload["config"] or {}, f"workers.{self.context.group}.config")
        self._configure(config)
        self.config = config
        self.logger.info("configured: %s", config)
        return self._snapshot()

    def _start_request(self) -> dict[str, Any]:
        if self.config is None:
            raise CommandRejected("start before configure: send configure first")
        with self._lock:
            if self._status != WorkerStatus.READY:
                raise CommandRejected(f"start is only allowed in status READY; worker is {self._status.value}")
            self._status = WorkerStatus.RUNNING
        self._started_at = time.monotonic()
        self._last_poll = self._started_at
        self.logger.info("started")
        return self._snapshot()

    def _publish_status(self) -> None:
        # Published from the main loop, outside the lock, so a slow name service never delays control replies.
        status = self._status
        if status == self._published:
            return
        try:
            self.name_resolver.add(self.status_name, status.value, keepalive_ttl=self.context.keepalive_ttl_s,
                                   replace=True)
        except NameResolveError:
            if not self._publish_failing:
                self.logger.warning("cannot publish status %s as %s; will retry", status.value, self.status_name,
                                    exc_info=True)
            self._publish_failing = True
            return
        self._published, self._publish_failing = status, False

    def _fail(self, exc: Exception, where: str) -> None:
        self.logger.exception("%s failed", where)
        with self._lock:
            self._error = ErrorInfo.from_exception(exc)
            self._status = WorkerStatus.ERROR

    def _shutdown(self, control_thread: threading.Thread) -> None:
        try:
            self._close()
        except Exception:  # noqa: BLE001 - exiting anyway; the log keeps the traceback
            self.logger.exception("_close failed")
        for name in (self.control_name, self.status_name):
            try:
                self.name_resolver.delete(name)
            except NameEntryNotFoundError:
                pass
        self._exit.set()
        control_thread.join(timeout=5)
        self.logger.info("exited with status %s", self._status.value)

    # ---- control thread ----

    def _serve_control(self) -> None:
        server = self._control
        assert server is not None
        outstanding = 0
        try:
            while not self._exit.is_set():
                while not self._replies.empty():
                    server.reply(*self._replies.get_nowait())
                    outstanding -= 1
                request = server.recv(0.005 if outstanding else CONTROL_POLL_S)
                if request is None:
                    continue
                if request.command in ("configure", "start"):
                    outstanding += 1
                    self._main_requests.put(request)
                    continue
                try:
                    result = self._handle_now(request.command)
                except CommandRejected as exc:
                    server.reply(request, error=ErrorInfo.from_exception(exc))
                    continue
                server.reply(request, result)
            while not self._replies.empty():
                server.reply(*self._replies.get_nowait())
            while not self._main_requests.empty():
                request = self._main_requests.get_nowait()
                if request is not None:
                    server.reply(request, error=ErrorInfo("RuntimeError", "the worker is exiting"))
        finally:
            server.close()

    def _handle_now(self, command: str) -> dict[str, Any]:
        with self._lock:
            if command == "pause":
                if self._status not in (WorkerStatus.RUNNING, WorkerStatus.PAUSED):
                    raise CommandRejected(f"pause is only allowed while RUNNING; worker is {self._status.value}")
                self._status = WorkerStatus.PAUSED
            elif command == "resume":
                if self._status not in (WorkerStatus.RUNNING, WorkerStatus.PAUSED):
                    raise CommandRejected(f"resume is only allowed while PAUSED; worker is {self._status.value}")
                self._status = WorkerStatus.RUNNING
        if command == "exit":
            self.request_exit()
            self._main_requests.put(None)  # wakes a main thread that waits for commands
        return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        try:
            stats = self._stats()
        except Exception as exc:  # noqa: BLE001 - a broken counter must not break status replies
            stats = {"stats_error": str(exc)}
        return {
            "worker_id": self.context.worker_id,
            "status": self._status.value,
            "configured": self.config is not None,
            "pid": os.getpid(),
            "node": socket.gethostname(),
            "polls": self._polls,
            "sample_count": self._samples,
            "batch_count": self._batches,
            "last_poll_age_s": time.monotonic() - self._last_poll,
            "in_poll": self._in_poll,
            "stats": stats,
            "control": self._control.as_dict() if self._control is not None else {},
            "error": self._error.to_dict() if self._error is not None else None,
        }
