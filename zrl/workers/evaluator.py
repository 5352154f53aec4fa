"""The evaluator worker: greedy accuracy on a fixed held-out set, by policy version.

It answers the same held-out problems (greedy, so the number depends only on the weights) with version 0 (the
starting model) at start, then with the newest version whenever it is at least `eval_every` versions past the
last one evaluated, and finally with the version the trainer tagged "final"; then it completes. Every result is a
record {"kind": "eval", "step": version, "heldout_accuracy": ...} in the run's metrics.jsonl.
"""

from __future__ import annotations

import time
from typing import Any

from zrl.engines.base import Engine
from zrl.paramdb import ParamDB, ParamDBError, VersionNotFoundError
from zrl.rl.evaluation import greedy_score
from zrl.rl.verifier import Verifier, VerifierConfig
from zrl.workers.base import PollResult, Worker
from zrl.workers.treepo_common import (
    FINAL_TAG,
    MetricsLog,
    load_problems,
    load_tokenizer,
    model_path,
    open_paramdb,
    run_dir,
    set_threads,
)
from zrl.workers.treepo_config import EvaluatorConfig

IDLE_WAIT_S = 0.2


class EvaluatorWorker(Worker):
    config_class = EvaluatorConfig
    engine: Engine | None = None
    verifier: Verifier | None = None
    metrics: MetricsLog | None = None
    paramdb: ParamDB | None = None

    def _configure(self, config: EvaluatorConfig) -> None:
        from zrl.engines.factory import make_engine

        set_threads(config.threads)
        path = model_path(config.model)
        self.tokenizer = load_tokenizer(path)
        self.problems = load_problems(config.problems)
        source = config.problems
        self.problem_set = f"synthetic/{source.split}" if source.kind == "synthetic" else source.file.path
        self.engine = make_engine(config.engine.kind, path, version=0, **config.engine.engine_kwargs())
        self.paramdb = open_paramdb(config.model, self.context, self.name_resolver)
        self.verifier = Verifier(VerifierConfig(workers=1), logger=self.logger)
        self.metrics = MetricsLog(run_dir(self.context), self.context.worker_id.replace("/", "-"))
        self.pin_holder = self.context.worker_id.replace("/", "-")
        self.evaluated: dict[int, float] = {}
        self.headline: dict[str, str] = {}

    def _poll(self) -> PollResult:
        if not self.evaluated:
            self._evaluate(0, weights=None)
            return PollResult(batch_count=1)
        model = self.config.model.name
        last = max(self.evaluated)
        final = self.paramdb.tags(model).get(FINAL_TAG)
        if final is not None and final not in self.evaluated:
            self._load_and_evaluate(final)
            return PollResult(batch_count=1, done=final in self.evaluated)
        newest = self.paramdb.newer_version(model, last + self.config.eval_every - 1)
        if newest is None or not self._load_and_evaluate(newest):
            time.sleep(IDLE_WAIT_S)
            return PollResult()
        return PollResult(batch_count=1)

    def _load_and_evaluate(self, version: int) -> bool:
        model = self.config.model.name
        try:
            self.paramdb.pin(model, version, self.pin_holder)
            loaded = self.paramdb.fetch(model, version, as_path=self.config.engine.kind == "vllm")
        except VersionNotFoundError:
            return False  # garbage-collected meanwhile; a newer one is due
        except ParamDBError as exc:
            self.logger.error("cannot evaluate model %r version %d: %s", model, version, exc)
            self.evaluated[version] = float("nan")
            return False
        self._evaluate(version, loaded.path if loaded.state_dict is None else loaded.state_dict)
        return True

    def _evaluate(self, version: int, weights: Any) -> None:
        started = time.perf_counter()
        if weights is not None:
            self.engine.load_weights(weights, version, adopt=True)
        score = greedy_score(self.engine, self.tokenizer, self.problems, self.verifier, self.config.answer_room())
        accuracy = score.accuracy
        seconds = time.perf_counter() - started
        self.evaluated[version] = accuracy
        self.metrics.write("eval", version, {
            "heldout_accuracy": accuracy, "heldout_answered": score.answered, "heldout_problems": len(self.problems),
            "heldout_set": self.problem_set, "heldout_response_tokens": score.mean_response_tokens,
            "eval_s": seconds})
        self.headline = {"heldout": f"{accuracy:.3f}@v{version}"}
        self.logger.info("version %d: held-out accuracy %.3f on %d problems (%.1f s)", version, accuracy,
                         len(self.problems), seconds)

    def _stats(self) -> dict[str, Any]:
        if self.config is None:
            return {}
        return {"headline": self.headline, "evaluated": {str(v): a for v, a in sorted(self.evaluated.items())}}

    def _close(self) -> None:
        for resource in (self.engine, self.verifier, self.metrics):
            if resource is not None:
                resource.close()
        if self.paramdb is not None and self.config is not None:
            self.paramdb.unpin(self.config.model.name, self.pin_holder)
