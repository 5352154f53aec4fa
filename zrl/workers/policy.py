"""The policy worker: hosts a generation engine and serves the inference stream.

Each poll it takes the waiting requests of every rollout worker (up to `max_batch`), answers them with one engine
call, and stamps every response with the version of the weights that produced it. Between polls it asks the
parameter DB whether a newer version was published (the name service announces pushes) and loads it in place,
without restarting the engine. The version it is loading is pinned, so garbage collection cannot delete it.
A policy worker that is relaunched during a run loads the newest version that loads before it registers its
inference address, so it never answers with the starting weights once the trainer has pushed.

A request is a `GenerationRequestMessage`, its answer a `GenerationResponse`, or a `GenerationRefusal` for a
request that is malformed or that the engine refused: the other requests of the batch are still answered
(`zrl.workers.messages`).
"""

from __future__ import annotations

import time
from typing import Any

from zrl.engines.base import Engine, GenerationRequest
from zrl.nameresolve import names
from zrl.paramdb import ParamDB, ParamDBError, VersionNotFoundError
from zrl.streams import InferenceStreamConfig, NameResolvingInferenceServer, Request, SocketConfig
from zrl.wire import WireError
from zrl.workers.base import PollResult, Worker
from zrl.workers.messages import GenerationRefusal, GenerationRequestMessage, GenerationResponse
from zrl.workers.treepo_common import model_path, open_paramdb, set_threads
from zrl.workers.treepo_config import PolicyConfig

LOAD_ATTEMPTS = 3
"""Listings of the parameter DB a starting policy worker reads when versions vanish (garbage-collected) under it."""


class PolicyWorker(Worker):
    config_class = PolicyConfig
    paramdb: ParamDB | None = None
    engine: Engine | None = None
    server: NameResolvingInferenceServer | None = None

    def _configure(self, config: PolicyConfig) -> None:
        from zrl.engines.factory import make_engine

        set_threads(config.threads)
        self.paramdb = open_paramdb(config.model, self.context, self.name_resolver)
        self.model_name = config.model.name
        self.pin_holder = self.context.worker_id.replace("/", "-")
        self.engine = make_engine(config.engine.kind, model_path(config.model), version=0,
                                  **config.engine.engine_kwargs())
        self.counts = {"requests": 0, "refused": 0, "engine_calls": 0, "reloads": 0, "reload_failures": 0}
        self.generate_s = 0.0
        self.reload_s = 0.0
        self.first_version_served: int | None = None
        self.failed_version = -1
        self._load_newest(config)
        self.server = NameResolvingInferenceServer(
            self.name_resolver, names.inference_stream(self.context.experiment, self.context.trial,
                                                       config.inference_stream),
            InferenceStreamConfig(sockets=SocketConfig(bind_host=self.context.host)), name=config.inference_stream,
            curve=self.context.curve)
        self.next_version_check = 0.0

    def _poll(self) -> PollResult:
        self._load_newer()
        requests = self.server.poll_requests(self.config.max_batch, timeout=self.config.poll_timeout_s)
        if not requests:
            return PollResult()
        self._load_newer()  # a version pushed while the poll waited for requests serves them already
        answers: dict[int, Any] = {}
        good: list[tuple[Request, GenerationRequest]] = []
        for request in requests:
            try:
                message = GenerationRequestMessage.from_wire(request.payload)
            except WireError as exc:
                answers[request.id] = GenerationRefusal(str(exc)).to_wire()
                continue
            good.append((request, message.to_generation(str(request.id))))
        if good:
            self._generate(good, answers)
        self.server.respond_many([(request, answers[request.id]) for request in requests])
        self.counts["requests"] += len(requests)
        return PollResult(sample_count=len(requests), batch_count=1)

    def _generate(self, batch: list[tuple[Request, GenerationRequest]], answers: dict[int, Any]) -> None:
        started = time.perf_counter()
        try:
            results = self.engine.generate([generation for _, generation in batch])
        except ValueError as exc:
            # One bad request must not cost the others their answers: retry one by one to isolate it.
            if len(batch) == 1:
                self.counts["refused"] += 1
                answers[batch[0][0].id] = GenerationRefusal(str(exc)).to_wire()
                return
            for item in batch:
                self._generate([item], answers)
            return
        self.generate_s += time.perf_counter() - started
        self.counts["engine_calls"] += 1
        if self.first_version_served is None:
            self.first_version_served = results[0].version
        for (request, _), result in zip(batch, results, strict=True):
            answers[request.id] = GenerationResponse.from_result(result).to_wire()

    def _load_newest(self, config: PolicyConfig) -> None:
        """Load the newest version in the parameter DB, passing over corrupt ones for older ones; none yet: keep the
        starting weights. Raises RuntimeError when versions exist but none loads."""
        model = config.model.name
        failures: list[str] = []
        for _ in range(LOAD_ATTEMPTS):
            versions = self.paramdb.list_versions(model)
            if not versions:
                return
            vanished = False
            for version in reversed(versions):
                try:
                    self._load(config, version)
                    return
                except VersionNotFoundError:
                    vanished = True  # garbage-collected since the listing: newer versions exist
                except (ParamDBError, ValueError, OSError) as exc:
                    self.counts["reload_failures"] += 1
                    self.failed_version = max(self.failed_version, version)
                    failures.append(f"version {version}: {exc}")
                    self.logger.error("cannot load model %r version %d, trying an older one: %s", model, version, exc)
            if not vanished:
                break
        raise RuntimeError(f"no version of model {model!r} in {self.paramdb.model_dir(model)} could be loaded, and "
                           f"this policy worker will not serve the starting weights instead: "
                           + ("; ".join(failures) or f"they were garbage-collected {LOAD_ATTEMPTS} times in a row"))

    def _load_newer(self) -> None:
        now = time.monotonic()
        if now < self.next_version_check:
            return
        self.next_version_check = now + self.config.version_check_s
        model = self.config.model.name
        version = self.paramdb.newer_version(model, max(self.engine.version, self.failed_version))
        if version is None:
            return
        try:
            self._load(self.config, version)
        except VersionNotFoundError as exc:
            self.logger.info("version %d vanished before it was loaded (%s); a newer one follows", version, exc)
        except (ParamDBError, ValueError, OSError) as exc:
            self.counts["reload_failures"] += 1
            self.failed_version = version
            self.logger.error("cannot load model %r version %d, still serving version %d: %s", model, version,
                              self.engine.version, exc)

    def _load(self, config: PolicyConfig, version: int) -> None:
        """Pin `version` (so garbage collection keeps it) and load it into the engine in place."""
        model = config.model.name
        started = time.perf_counter()
        self.paramdb.pin(model, version, self.pin_holder)
        loaded = self.paramdb.fetch(model, version, as_path=config.engine.kind == "vllm")
        self.engine.load_weights(loaded.path if loaded.state_dict is None else loaded.state_dict, version,
                                 adopt=True)
        self.reload_s += time.perf_counter() - started
        self.counts["reloads"] += 1
        self.logger.info("serving version %d (loaded in %.3f s)", version, time.perf_counter() - started)

    def _stats(self) -> dict[str, Any]:
        if self.config is None:
            return {}
        return {**self.counts, "version": self.engine.version, "first_version_served": self.first_version_served,
                "generate_s": round(self.generate_s, 3),
                "reload_s": round(self.reload_s, 3), "engine": self.engine.stats(), "stream": self.server.as_dict()}

    def _close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.engine is not None:
            self.engine.close()
        if self.paramdb is not None:
            self.paramdb.unpin(self.model_name, self.pin_holder)
