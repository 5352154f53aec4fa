"""Answer checking with math-verify in a process pool, under a hard wall-clock timeout per call.

A call that runs past its deadline is abandoned: the pool's processes are killed and a fresh pool takes the
remaining work, so one pathological answer can never block scoring. No signal.alarm is used anywhere: the
timeout is enforced from the parent process. A call that kills its process breaks the whole pool; when several
calls were in flight, each of them reruns alone, so that only the answer that crashes is charged for it.
"""

from __future__ import annotations

import collections
import enum
import logging
import multiprocessing
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from zrl.rl.reward import correctness_reward, last_boxed, overlong_penalty
from zrl.rl.tree.trajectory import Trajectory

VerifyFn = Callable[[str, str], bool]


@dataclass(frozen=True)
class VerifierConfig:
    """How answers are checked and turned into rewards."""

    timeout_s: float = 5.0
    """Hard wall-clock limit of one answer check; past it the check counts as wrong and its process is killed."""
    workers: int = 2
    """Processes in the verification pool."""
    start_method: str = "spawn"
    """multiprocessing start method of the pool: "spawn" or "forkserver" (never fork: the parent has threads)."""
    startup_timeout_s: float = 120.0
    """Limit for starting the pool and importing the verifier in each process."""
    max_attempts: int = 2
    """Tries per answer whose check crashes its process (found by rerunning it alone); then it is an error."""
    overlong_buffer: int = 0
    """DAPO overlong penalty buffer in tokens; 0 turns the penalty off."""

    def __post_init__(self) -> None:
        if self.start_method not in ("spawn", "forkserver"):
            raise ValueError(f"VerifierConfig.start_method={self.start_method!r} must be 'spawn' or 'forkserver'")
        if self.timeout_s <= 0 or self.workers < 1 or self.max_attempts < 1 or self.overlong_buffer < 0:
            raise ValueError(f"VerifierConfig needs timeout_s > 0, workers >= 1, max_attempts >= 1 and "
                             f"overlong_buffer >= 0; got timeout_s={self.timeout_s}, workers={self.workers}, "
                             f"max_attempts={self.max_attempts}, overlong_buffer={self.overlong_buffer}")


class Verdict(str, enum.Enum):
    CORRECT = "correct"
    WRONG = "wrong"
    NO_ANSWER = "no_answer"
    TIMEOUT = "timeout"
    ERROR = "error"


# math-verify's loggers that warn, once per process, that its own timeout is off.
_MATH_VERIFY_LOGGERS = ("math_verify.parser", "math_verify.grader")


class _DropTimeoutDisabledWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


def quiet_math_verify_timeout_warnings() -> None:
    """Drop math-verify's "Timeout is disabled" warning (the pool enforces timeouts); its other logs stay."""
    for name in _MATH_VERIFY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTimeoutDisabledWarning) for f in logger.filters):
            logger.addFilter(_DropTimeoutDisabledWarning())


def math_verify_equal(predicted: str, truth: str) -> bool:
    """Whether math-verify finds the boxed contents `predicted` equal to the ground truth `truth`."""
    from math_verify import parse, verify

    quiet_math_verify_timeout_warnings()
    # Timeouts inside math-verify use signal.alarm; they are off here because the pool enforces its own.
    gold = parse(f"\\boxed{{{truth}}}", parsing_timeout=None)
    pred = parse(f"\\boxed{{{predicted}}}", parsing_timeout=None)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=None))


_PLAIN_INTEGER = re.compile(r"[+-]?\d+")


def plain_integers_equal(predicted: str, truth: str) -> bool | None:
    """Whether two answers that are both plain integers (surrounding whitespace aside) have the same value, as
    math-verify judges them ("007" = "7", "-0" = "0"); None when either is anything else."""
    predicted, truth = predicted.strip(), truth.strip()
    if not (_PLAIN_INTEGER.fullmatch(predicted) and _PLAIN_INTEGER.fullmatch(truth)):
        return None
    return int(predicted) == int(truth)


def _warm_up(verify_fn: VerifyFn) -> bool:
    return verify_fn("1", "1")


@dataclass
class VerifierStats:
    """Counters since the verifier was created."""

    checks: int = 0
    shortcut: int = 0
    """Answers judged without the pool: equal to the truth as text, or, with math-verify, both plain integers."""
    no_answer: int = 0
    timeouts: int = 0
    errors: int = 0
    pool_restarts: int = 0


@dataclass
class _Job:
    index: int
    predicted: str
    truth: str
    crashes: int = 0
    """Times this check crashed its process while running alone."""
    suspect: bool = False
    """In flight when the pool broke under several checks: it runs alone from then on."""


class Verifier:
    """Checks many responses at once in a process pool; use as a context manager or call close()."""

    def __init__(self, config: VerifierConfig, verify_fn: VerifyFn = math_verify_equal,
                 logger: logging.Logger | None = None):
        self.config = config
        self.verify_fn = verify_fn
        # math-verify takes milliseconds (a sympy parse) to compare two integers; they are compared here instead.
        self._judges_plain_integers = verify_fn is math_verify_equal
        self.log = logger or logging.getLogger(__name__)
        self.stats = VerifierStats()
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the pool's processes."""
        self._kill_pool()

    def verify_many(self, responses: Sequence[str], truths: Sequence[str]) -> list[Verdict]:
        """A verdict per response: its last \\boxed{} answer against the ground truth at the same index."""
        if len(responses) != len(truths):
            raise ValueError(f"{len(responses)} responses but {len(truths)} ground-truth answers")
        verdicts: list[Verdict | None] = [None] * len(responses)
        jobs: collections.deque[_Job] = collections.deque()
        for i, (response, truth) in enumerate(zip(responses, truths, strict=True)):
            self.stats.checks += 1
            predicted = last_boxed(response)
            if predicted is None:
                self.stats.no_answer += 1
                verdicts[i] = Verdict.NO_ANSWER
            elif (verdict := self._judge_without_pool(predicted, str(truth))) is not None:
                self.stats.shortcut += 1
                verdicts[i] = verdict
            else:
                jobs.append(_Job(i, predicted, str(truth)))
        if jobs:
            self._run(jobs, verdicts)
        return [v if v is not None else Verdict.ERROR for v in verdicts]

    def _judge_without_pool(self, predicted: str, truth: str) -> Verdict | None:
        """CORRECT for the truth as text; with math-verify, the verdict on two plain integers; else None."""
        if "".join(predicted.split()) == "".join(truth.split()):
            return Verdict.CORRECT
        equal = plain_integers_equal(predicted, truth) if self._judges_plain_integers else None
        return None if equal is None else Verdict.CORRECT if equal else Verdict.WRONG

    def rewards(self, responses: Sequence[str], truths: Sequence[str], lengths: Sequence[int] | None = None,
                cap: int | None = None) -> tuple[list[float], list[Verdict]]:
        """+1/-1 rewards (plus the overlong penalty when configured, which needs lengths and cap) and verdicts."""
        verdicts = self.verify_many(responses, truths)
        rewards = [correctness_reward(v is Verdict.CORRECT) for v in verdicts]
        if self.config.overlong_buffer > 0:
            if lengths is None or cap is None:
                raise ValueError("the overlong penalty is on (overlong_buffer > 0): pass lengths and cap")
            buffer = self.config.overlong_buffer
            rewards = [r + overlong_penalty(n, cap, buffer) for r, n in zip(rewards, lengths, strict=True)]
        return rewards, verdicts

    def score_trajectories(self, trajectories: Sequence[Trajectory], truths: Mapping[str, str],
                           decode: Callable[[Sequence[int]], str], cap: int | None = None) -> list[Verdict]:
        """Fill in each trajectory's reward; `truths` maps prompt uid to its ground-truth answer."""
        missing = sorted({t.uid for t in trajectories} - set(truths))
        if missing:
            raise ValueError(f"no ground-truth answer for prompt uid(s) {missing[:5]}")
        texts = [decode(t.response_ids) for t in trajectories]
        rewards, verdicts = self.rewards(texts, [truths[t.uid] for t in trajectories],
                                         [len(t.response_ids) for t in trajectories], cap)
        for t, r in zip(trajectories, rewards, strict=True):
            t.reward = r
        return verdicts

    # ---- the pool ---------------------------------------------------------------------------------------------

    def _run(self, jobs: collections.deque[_Job], verdicts: list[Verdict | None]) -> None:
        suspects: collections.deque[_Job] = collections.deque()
        in_flight: dict[Future, tuple[_Job, float]] = {}
        while jobs or suspects or in_flight:
            self._submit(jobs, suspects, in_flight)
            crashed, overdue = self._collect(in_flight, verdicts)
            if not crashed and not overdue:
                continue
            survivors = [job for job, _ in in_flight.values()]
            in_flight.clear()
            self._kill_pool()
            self.stats.pool_restarts += 1
            if crashed:
                self._after_crash(crashed + survivors, suspects, verdicts)
            else:
                # The other checks in flight die with the pool; they are not at fault, so they run again first.
                jobs.extendleft(reversed(survivors))

    def _submit(self, jobs: collections.deque[_Job], suspects: collections.deque[_Job],
                in_flight: dict[Future, tuple[_Job, float]]) -> None:
        """Fill the pool with jobs, or, while there are suspects, run one suspect at a time and nothing else."""
        pool = self._ensure_pool()
        isolating = any(job.suspect for job, _ in in_flight.values())
        if suspects and not in_flight:
            self._submit_one(pool, suspects.popleft(), in_flight)
        elif not suspects and not isolating:
            while jobs and len(in_flight) < self.config.workers:
                self._submit_one(pool, jobs.popleft(), in_flight)

    def _submit_one(self, pool: ProcessPoolExecutor, job: _Job,
                    in_flight: dict[Future, tuple[_Job, float]]) -> None:
        future = pool.submit(self.verify_fn, job.predicted, job.truth)
        in_flight[future] = (job, time.monotonic() + self.config.timeout_s)

    def _collect(self, in_flight: dict[Future, tuple[_Job, float]],
                 verdicts: list[Verdict | None]) -> tuple[list[_Job], list[_Job]]:
        """Wait for the first result or deadline; returns the jobs whose pool broke and those that timed out."""
        next_deadline = min(deadline for _, deadline in in_flight.values())
        done, _ = wait(list(in_flight), timeout=max(next_deadline - time.monotonic(), 0.0),
                       return_when=FIRST_COMPLETED)
        crashed = []
        for future in done:
            job, _ = in_flight.pop(future)
            if not self._record(job, future, verdicts):
                crashed.append(job)
        now = time.monotonic()
        overdue = [f for f, (_, deadline) in in_flight.items() if deadline <= now and not f.done()]
        timed_out = [in_flight.pop(f)[0] for f in overdue]
        for job in timed_out:
            self.stats.timeouts += 1
            verdicts[job.index] = Verdict.TIMEOUT
            self.log.warning("verifier timed out after %.1fs on answer %r (truth %r); %d timeouts so far",
                             self.config.timeout_s, job.predicted[:200], job.truth[:200], self.stats.timeouts)
        return crashed, timed_out

    def _record(self, job: _Job, future: Future, verdicts: list[Verdict | None]) -> bool:
        """Store the verdict of a finished check; False when its pool broke, so there is none."""
        try:
            verdicts[job.index] = Verdict.CORRECT if future.result() else Verdict.WRONG
        except BrokenProcessPool:
            return False
        except Exception as exc:  # noqa: BLE001 - any verifier failure is a wrong answer, counted
            self.stats.errors += 1
            verdicts[job.index] = Verdict.ERROR
            self.log.warning("verifier raised %s on answer %r (truth %r): %s", type(exc).__name__,
                             job.predicted[:200], job.truth[:200], exc)
        return True

    def _after_crash(self, victims: list[_Job], suspects: collections.deque[_Job],
                     verdicts: list[Verdict | None]) -> None:
        """Charge the crash to the one check that was running, or rerun each of several alone to find the culprit."""
        if len(victims) > 1:
            for job in victims:
                job.suspect = True
            suspects.extend(victims)
            return
        (culprit,) = victims
        culprit.crashes += 1
        if culprit.crashes < self.config.max_attempts:
            culprit.suspect = True
            suspects.append(culprit)
            return
        self.stats.errors += 1
        verdicts[culprit.index] = Verdict.ERROR
        self.log.warning("giving up on answer %r after it crashed its verification process %d times",
                         culprit.predicted[:200], culprit.crashes)

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is not None:
            return self._pool
        context = multiprocessing.get_context(self.config.start_method)
        pool = ProcessPoolExecutor(max_workers=self.config.workers, mp_context=context,
                                   initializer=quiet_math_verify_timeout_warnings)
        self._pool = pool
        warm = [pool.submit(_warm_up, self.verify_fn) for _ in range(self.config.workers)]
        done, not_done = wait(warm, timeout=self.config.startup_timeout_s)
        failures = [f.exception() for f in done if f.exception() is not None]
        if not_done or failures:
            self._kill_pool()
            reason = f"{len(not_done)} warm-up calls still running" if not_done else repr(failures[0])
            raise RuntimeError(f"verifier pool failed to start within {self.config.startup_timeout_s}s "
                               f"({self.config.start_method}, {self.config.workers} workers): {reason}")
        return pool

    def _kill_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # ProcessPoolExecutor cannot cancel a running call; killing its processes is the only way to stop one.
        processes = list((getattr(pool, "_processes", None) or {}).values())
        for process in processes:
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout=5)
