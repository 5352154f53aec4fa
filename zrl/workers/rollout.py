"""The rollout worker: grows TreePO trees over the inference stream and posts them, scored, on the sample stream.

Each poll: start new trees from this worker's shard of the problems (index mod count, reshuffled every epoch)
while fewer than `trees_in_flight` are in progress and the trainer can still use them; send every tree's next
round of segment requests to the policy workers; feed the answers back to the sampler; hand finished trees to a
scoring thread (the verifier runs in its own process pool, so sampling never waits for it); post scored trees.

Throttle: the trainer consumes `prompts_per_step` trees per version and drops trees more than `max_staleness`
versions old, so this worker (one of `count`) keeps its posted + in-progress trees, less those the trainer
reports dropped (`names.sample_drops`), within (trainer version + max_staleness + 1) * prompts_per_step / count.
It counts from the trainer version it started at, and again from the version at which a trainer resumed from a
checkpoint (`names.sample_stream_reset`): the trees posted before then are gone with the trainer that had them.

Data position: how many problems this worker has started from its shard (`zrl.rl.shard.ShardCursor`) is saved
atomically in `{run_dir}/shards/{group}-{index}.json` whenever it changes, so a restarted or resumed worker
continues its shard where it stood (only the trees in flight when it stopped are started again, by no one). A
worker of a new controller run of the same trial (resume) also takes over the produced-sample counters saved there,
so the sample accounting covers the whole trial; one relaunched within a run counts from zero, as a new incarnation.

The requests, answers and samples it exchanges are the messages of `zrl.workers.messages`.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from zrl.atomic_file import write_json_atomic
from zrl.engines.base import GenerationResult
from zrl.nameresolve import NameEntryNotFoundError, NameResolveError, names
from zrl.rl.problem import Problem
from zrl.rl.shard import ShardCursor
from zrl.rl.tree import TreeResult, TreeSampler
from zrl.rl.verifier import Verifier
from zrl.streams import (
    InferenceStreamConfig,
    NameResolvingInferenceClient,
    NameResolvingSampleProducer,
    SampleStreamConfig,
)
from zrl.wire import WireError
from zrl.workers.base import PollResult, Worker
from zrl.workers.messages import (
    GenerationRefusal,
    GenerationRequestMessage,
    TreeSample,
    generation_answer_from_wire,
)
from zrl.workers.treepo_common import load_problems, load_tokenizer, model_path, open_paramdb, run_dir
from zrl.workers.treepo_config import RolloutConfig

VERSION_CHECK_S = 0.2
RESPONSE_WAIT_S = 0.02
SHARDS_DIR = "shards"
RESTORED_COUNTS = ("trees_posted", "trajectories_posted")


def load_tokenizer_and_eos(path: Any) -> tuple[Any, list[int]]:
    """The model directory's tokenizer and every EOS id of its generation config (else its config)."""
    from zrl.engines.hf import model_eos_token_ids

    return load_tokenizer(path), list(model_eos_token_ids(path))


class RolloutWorker(Worker):
    config_class = RolloutConfig
    client: NameResolvingInferenceClient | None = None
    producer: NameResolvingSampleProducer | None = None
    verifier: Verifier | None = None
    scoring: ThreadPoolExecutor | None = None

    def _configure(self, config: RolloutConfig) -> None:
        experiment, trial = self.context.experiment, self.context.trial
        self.tokenizer, eos_ids = load_tokenizer_and_eos(model_path(config.model))
        self.cursor = ShardCursor(load_problems(config.problems), self.context.index, self.context.group_size,
                                  config.shuffle_seed)
        self.shard_state = run_dir(self.context) / SHARDS_DIR / f"{self.context.group}-{self.context.index}.json"
        self.run_id = self._controller_run()
        self.counts = {"trees_posted": 0, "trajectories_posted": 0, "requests": 0, "epoch": 0, "throttled_polls": 0}
        self.restored_produced = 0
        self._restore_shard_state()
        self.sampler = TreeSampler(config.tree, eos_ids if len(eos_ids) > 1 else eos_ids[0], self.tokenizer.decode)
        self.paramdb = open_paramdb(config.model, self.context, self.name_resolver)
        self.client = NameResolvingInferenceClient(
            self.name_resolver, names.inference_stream(experiment, trial, config.inference_stream),
            InferenceStreamConfig(request_timeout_s=config.request_timeout_s), name=config.inference_stream,
            curve=self.context.curve)
        self.producer = NameResolvingSampleProducer(
            self.name_resolver, names.sample_stream(experiment, trial, config.sample_stream),
            SampleStreamConfig(), name=config.sample_stream, curve=self.context.curve)
        self.verifier = Verifier(config.verifier, logger=self.logger)
        self.scoring = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring")
        self.scored: list[Future] = []
        self.requests: dict[int, str] = {}
        self.trees: dict[str, tuple[int, int, Problem, float]] = {}
        self.trainer_version = 0
        self.next_version_check = 0.0
        self.trees_dropped = 0
        self.drops_key = names.sample_drops(experiment, trial, config.sample_stream, self.context.worker_id)
        self.reset_key = names.sample_stream_reset(experiment, trial, config.sample_stream)
        self.counting_since: str | None = None
        """The stream reset this worker's throttle counts from ("" for its own start); None before the first check."""
        self.base_version = self.posted_at_base = self.dropped_at_base = 0

    def _poll(self) -> PollResult:
        self._check_trainer_version()
        started = self._start_trees()
        sent = self._send_requests()
        answered = self._receive_answers()
        self._score_finished()
        posted = self._post_scored()
        if started or posted:
            self._save_shard_state()
        return PollResult(sample_count=posted, batch_count=int(bool(started or sent or answered or posted)))

    # ---- steps of a poll ----

    def _check_trainer_version(self) -> None:
        now = time.monotonic()
        if now >= self.next_version_check:
            self.next_version_check = now + VERSION_CHECK_S
            reset = self._stream_reset()
            newest = self.paramdb.newer_version(self.config.model.name, self.trainer_version)
            if newest is not None:
                self.trainer_version = newest
            if reset != self.counting_since:
                self._count_from_now(reset)
            self.trees_dropped = max(self.trees_dropped, self._trees_dropped_by_trainer())

    def _stream_reset(self) -> str:
        try:
            return self.name_resolver.get(self.reset_key)
        except NameEntryNotFoundError:
            return ""
        except NameResolveError as exc:
            self.logger.debug("cannot read %s: %s", self.reset_key, exc)
            return self.counting_since or ""

    def _count_from_now(self, reset: str) -> None:
        """Count the throttle's trees from the current trainer version: at this worker's start, and when a trainer
        resumed from a checkpoint (the trees it had are gone, and its drop counts start again)."""
        if self.counting_since is not None:
            self.logger.info("the trainer resumed at version %s: trees posted before count no longer", reset)
        self.counting_since = reset
        self.base_version = self.trainer_version
        self.posted_at_base = self.counts["trees_posted"]
        self.trees_dropped = self.dropped_at_base = self._trees_dropped_by_trainer()

    def _trees_dropped_by_trainer(self) -> int:
        try:
            return int(self.name_resolver.get(self.drops_key))
        except NameEntryNotFoundError:
            return 0
        except (NameResolveError, ValueError) as exc:
            self.logger.debug("cannot read %s: %s", self.drops_key, exc)
            return self.trees_dropped

    def _start_trees(self) -> int:
        in_progress = self.sampler.in_progress + len(self.scored)
        allowed = self.config.staleness.trees_to_start(
            self.trainer_version - self.base_version, self.context.group_size,
            posted=self.counts["trees_posted"] - self.posted_at_base,
            dropped=self.trees_dropped - self.dropped_at_base, in_progress=in_progress)
        room = min(self.config.trees_in_flight - in_progress, allowed)
        if room <= 0:
            if in_progress < self.config.trees_in_flight:
                self.counts["throttled_polls"] += 1
            return 0
        for _ in range(room):
            position = self.cursor.position
            epoch, problem = self.cursor.next()
            tree_uid = f"{problem.uid}@{epoch}"
            prompt_ids = self.tokenizer(problem.prompt, add_special_tokens=False)["input_ids"]
            self.sampler.add_prompt(tree_uid, prompt_ids)
            self.trees[tree_uid] = (epoch, position, problem, time.monotonic())
            self.counts["epoch"] = epoch
        return room

    def _send_requests(self) -> int:
        pending = self.sampler.pending_requests()
        for request in pending:
            stream_id = self.client.post(GenerationRequestMessage.from_generation(request).to_wire(), flush=False)
            self.requests[stream_id] = request.request_id
        if pending:
            self.client.flush()
            self.counts["requests"] += len(pending)
        return len(pending)

    def _receive_answers(self) -> int:
        responses = self.client.poll_responses(timeout=RESPONSE_WAIT_S if self.requests else 0.0)
        results = []
        for stream_id, payload in responses:
            request_id = self.requests.pop(stream_id, None)
            if request_id is None:
                continue
            results.append(_generation_result(request_id, payload))
        if results:
            self.sampler.on_results(results)
        return len(results)

    def _score_finished(self) -> None:
        for tree in self.sampler.pop_finished():
            epoch, position, problem, started = self.trees.pop(tree.uid)
            gen_s = time.monotonic() - started
            self.scored.append(self.scoring.submit(self._score, tree, epoch, position, problem, gen_s))

    def _score(self, tree: TreeResult, epoch: int, position: int, problem: Problem, gen_s: float) -> TreeSample:
        started = time.perf_counter()
        self.verifier.score_trajectories(tree.trajectories, {tree.uid: problem.answer}, self.tokenizer.decode,
                                         self.config.tree.cap)
        return TreeSample(tree, problem_uid=problem.uid, producer=self.context.worker_id,
                          incarnation=self.incarnation, epoch=epoch, shard_position=position, gen_s=gen_s,
                          reward_s=time.perf_counter() - started)

    def _post_scored(self) -> int:
        done, pending = [], []
        for future in self.scored:
            (done if future.done() else pending).append(future)
        if not done:
            return 0
        self.scored = pending
        trajectories = 0
        for future in done:
            sample = future.result()  # a scoring error fails the worker loudly, with its traceback
            # Counted before it is handed to the stream, so a consumer never reports more than was produced.
            self.counts["trees_posted"] += 1
            self.counts["trajectories_posted"] += len(sample.tree.trajectories)
            trajectories += len(sample.tree.trajectories)
            self.producer.post(sample.to_wire())
        self.producer.flush()
        return trajectories

    # ---- the saved shard position ----

    def _controller_run(self) -> str:
        """Who holds the trial's controller lease: it tells a resumed trial (a new controller) from a relaunch."""
        try:
            return self.name_resolver.get(names.controller(self.context.experiment, self.context.trial))
        except (NameEntryNotFoundError, NameResolveError):
            return ""

    def _shard_identity(self) -> dict[str, int]:
        return {"index": self.context.index, "count": self.context.group_size, "shard_size": len(self.cursor.shard),
                "seed": self.cursor.seed}

    def _restore_shard_state(self) -> None:
        try:
            saved = json.loads(self.shard_state.read_text())
            position = int(saved["position"])
            identity = {key: int(saved[key]) for key in self._shard_identity()}
            counts = {key: int(saved[key]) for key in RESTORED_COUNTS}
            run = str(saved["run"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.logger.warning("cannot read the saved shard position %s (%s: %s); starting the shard from its "
                                "beginning", self.shard_state, type(exc).__name__, exc)
            return
        if identity != self._shard_identity():
            self.logger.warning("the shard changed since its position was saved in %s (%s, now %s); starting it "
                                "from its beginning", self.shard_state, identity, self._shard_identity())
            return
        self.cursor.position = position
        if run != self.run_id:
            self.counts.update(counts)
            self.restored_produced = counts["trajectories_posted"]
        self.logger.info("continuing the shard at position %d (epoch %d, offset %d of %d)%s", position,
                         self.cursor.epoch, self.cursor.offset, len(self.cursor.shard),
                         f"; {counts['trees_posted']} trees were posted before" if run != self.run_id else "")

    def _restored(self) -> dict[str, Any]:
        return {"restored": {"produced": self.restored_produced}} if self.restored_produced else {}

    def _save_shard_state(self) -> None:
        self.shard_state.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.shard_state, {"position": self.cursor.position, **self._shard_identity(),
                                             "run": self.run_id, **{k: self.counts[k] for k in RESTORED_COUNTS}})

    def _stats(self) -> dict[str, Any]:
        if self.config is None:
            return {}
        return {**self.counts, "trees_dropped_by_trainer": self.trees_dropped, "trainer_version": self.trainer_version,
                "shard_position": self.cursor.position, "trees_in_progress": self.sampler.in_progress,
                "trees_scoring": len(self.scored), "verifier": vars(self.verifier.stats),
                "accounting": {"produced": self.counts["trajectories_posted"], "incarnation": self.incarnation,
                               **self._restored()},
                "samples": self.producer.as_dict(), "inference": self.client.as_dict()}

    def _close(self) -> None:
        if self.scoring is not None:
            self.scoring.shutdown(wait=False, cancel_futures=True)
        if self.verifier is not None:
            self.verifier.close()
        for stream in (self.producer, self.client):
            if stream is not None:
                stream.close()


def _generation_result(request_id: str, payload: Any) -> GenerationResult:
    """The policy's answer to a request; a refusal or a malformed answer fails the worker."""
    try:
        answer = generation_answer_from_wire(payload)
    except WireError as exc:
        raise RuntimeError(f"the policy's answer to generation request {request_id} is malformed: {exc}") from None
    if isinstance(answer, GenerationRefusal):
        raise RuntimeError(f"the policy refused generation request {request_id}: {answer.error}")
    return answer.to_result(request_id)
