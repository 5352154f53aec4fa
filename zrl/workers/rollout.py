"""The rollout worker: grows TreePO trees over the inference stream and posts them, scored, on the sample stream.

Each poll: start new trees from this worker's shard of the problems (index mod count, reshuffled every epoch)
while fewer than `trees_in_flight` are in progress and the trainer can still use them; send every tree's next
round of segment requests to the policy workers; feed the answers back to the sampler; hand finished trees to a
scoring thread (the verifier runs in its own process pool, so sampling never waits for it); post scored trees.

Throttle: the trainer consumes `prompts_per_step` trees per version and drops trees more than `max_staleness`
versions old, so this worker (one of `count`) keeps its posted + in-progress trees, less those the trainer
reports dropped (`names.sample_drops`), within (trainer version + max_staleness + 1) * prompts_per_step / count.

Sample payload: {"tree": TreeResult.to_dict(), "producer": worker id, "epoch": int, "gen_s": float,
"reward_s": float}.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from zrl.engines.base import GenerationResult
from zrl.nameresolve import NameEntryNotFoundError, NameResolveError, names
from zrl.rl.problem import Problem
from zrl.rl.tree import TreeResult, TreeSampler
from zrl.rl.verifier import Verifier
from zrl.streams import (
    InferenceStreamConfig,
    NameResolvingInferenceClient,
    NameResolvingSampleProducer,
    SampleStreamConfig,
)
from zrl.workers.base import PollResult, Worker
from zrl.workers.treepo_common import load_problems, load_tokenizer, model_path, open_paramdb
from zrl.workers.treepo_config import RolloutConfig

VERSION_CHECK_S = 0.2
RESPONSE_WAIT_S = 0.02


def load_tokenizer_and_eos(path: Any) -> tuple[Any, list[int]]:
    """The model directory's tokenizer and every EOS id of its generation config (else its config)."""
    from zrl.engines.hf import model_eos_token_ids

    return load_tokenizer(path), list(model_eos_token_ids(path))


def shard_epochs(problems: list[Problem], index: int, count: int, seed: int) -> Iterator[tuple[int, Problem]]:
    """(epoch, problem) forever over this worker's shard, reshuffled every epoch by `seed`."""
    shard = problems[index::count]
    if not shard:
        raise ValueError(f"rollout worker {index} of {count} gets no problems from a dataset of {len(problems)}")
    epoch = 0
    while True:
        order = list(shard)
        random.Random(f"{seed}-{index}-{epoch}").shuffle(order)
        for problem in order:
            yield epoch, problem
        epoch += 1


class RolloutWorker(Worker):
    config_class = RolloutConfig

    def _configure(self, config: RolloutConfig) -> None:
        experiment, trial = self.context.experiment, self.context.trial
        self.tokenizer, eos_ids = load_tokenizer_and_eos(model_path(config.model))
        self.problems = {p.uid: p for p in load_problems(config.problems)}
        self.upcoming = shard_epochs(list(self.problems.values()), self.context.index, self.context.group_size,
                                     config.shuffle_seed)
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
        self.trees: dict[str, tuple[int, Problem, float]] = {}
        self.trainer_version = 0
        self.next_version_check = 0.0
        self.counts = {"trees_posted": 0, "trajectories_posted": 0, "requests": 0, "epoch": 0, "throttled_polls": 0}
        self.trees_dropped = 0
        self.drops_key = names.sample_drops(experiment, trial, config.sample_stream, self.context.worker_id)

    def _poll(self) -> PollResult:
        self._check_trainer_version()
        started = self._start_trees()
        sent = self._send_requests()
        answered = self._receive_answers()
        self._score_finished()
        posted = self._post_scored()
        return PollResult(sample_count=posted, batch_count=int(bool(started or sent or answered or posted)))

    # ---- steps of a poll ----

    def _check_trainer_version(self) -> None:
        now = time.monotonic()
        if now >= self.next_version_check:
            self.next_version_check = now + VERSION_CHECK_S
            newest = self.paramdb.newer_version(self.config.model.name, self.trainer_version)
            if newest is not None:
                self.trainer_version = newest
            self.trees_dropped = max(self.trees_dropped, self._trees_dropped_by_trainer())

    def _trees_dropped_by_trainer(self) -> int:
        try:
            return int(self.name_resolver.get(self.drops_key))
        except NameEntryNotFoundError:
            return 0
        except (NameResolveError, ValueError) as exc:
            self.logger.debug("cannot read %s: %s", self.drops_key, exc)
            return self.trees_dropped

    def _tree_budget(self) -> int:
        config = self.config
        wanted = (self.trainer_version + config.max_staleness + 1) * config.prompts_per_step
        return math.ceil(wanted / self.context.group_size)

    def _start_trees(self) -> int:
        in_progress = self.sampler.in_progress + len(self.scored)
        # Trees the trainer dropped (stale, or uniform under dynamic sampling) do not count: they are replaced.
        useful = self.counts["trees_posted"] - self.trees_dropped
        room = min(self.config.trees_in_flight - in_progress, self._tree_budget() - useful - in_progress)
        if room <= 0:
            if in_progress < self.config.trees_in_flight:
                self.counts["throttled_polls"] += 1
            return 0
        for _ in range(room):
            epoch, problem = next(self.upcoming)
            tree_uid = f"{problem.uid}@{epoch}"
            prompt_ids = self.tokenizer(problem.prompt, add_special_tokens=False)["input_ids"]
            self.sampler.add_prompt(tree_uid, prompt_ids)
            self.trees[tree_uid] = (epoch, problem, time.monotonic())
            self.counts["epoch"] = epoch
        return room

    def _send_requests(self) -> int:
        pending = self.sampler.pending_requests()
        for request in pending:
            stream_id = self.client.post({
                "prefix": request.prefix_ids, "max_new_tokens": request.max_new_tokens,
                "temperature": request.sampling.temperature, "top_p": request.sampling.top_p,
                "seed": request.sampling.seed}, flush=False)
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
            if "error" in payload:
                raise RuntimeError(f"the policy refused generation request {request_id}: {payload['error']}")
            results.append(GenerationResult(request_id, list(payload["tokens"]), list(payload["logprobs"]),
                                            bool(payload["eos"]), int(payload["version"])))
        if results:
            self.sampler.on_results(results)
        return len(results)

    def _score_finished(self) -> None:
        for tree in self.sampler.pop_finished():
            epoch, problem, started = self.trees.pop(tree.uid)
            gen_s = time.monotonic() - started
            self.scored.append(self.scoring.submit(self._score, tree, epoch, problem, gen_s))

    def _score(self, tree: TreeResult, epoch: int, problem: Problem, gen_s: float) -> dict[str, Any]:
        started = time.perf_counter()
        self.verifier.score_trajectories(tree.trajectories, {tree.uid: problem.answer}, self.tokenizer.decode,
                                         self.config.tree.cap)
        return {"tree": tree.to_dict(), "problem_uid": problem.uid, "producer": self.context.worker_id,
                "epoch": epoch, "gen_s": gen_s, "reward_s": time.perf_counter() - started}

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
            self.counts["trajectories_posted"] += len(sample["tree"]["trajectories"])
            trajectories += len(sample["tree"]["trajectories"])
            self.producer.post(sample)
        self.producer.flush()
        return trajectories

    def _stats(self) -> dict[str, Any]:
        if not hasattr(self, "producer"):
            return {}
        return {**self.counts, "trees_dropped_by_trainer": self.trees_dropped, "trainer_version": self.trainer_version, "trees_in_progress": self.sampler.in_progress,
                "trees_scoring": len(self.scored), "verifier": vars(self.verifier.stats),
                "accounting": {"produced": self.counts["trajectories_posted"]},
                "samples": self.producer.as_dict(), "inference": self.client.as_dict()}

    def _close(self) -> None:
        if hasattr(self, "scoring"):
            self.scoring.shutdown(wait=False, cancel_futures=True)
            self.verifier.close()
            self.producer.close()
            self.client.close()
