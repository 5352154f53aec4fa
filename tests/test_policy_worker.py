"""The policy worker in-process, over a real inference stream: which version answers a request; and how it answers
a batch with a malformed request in it."""

from __future__ import annotations

import math
import threading
import time
import uuid
from pathlib import Path

import pytest
from fixtures_tiny import tiny_model_dir  # noqa: F401
from transformers import AutoModelForCausalLM

from zrl.engines.base import GenerationRequest, GenerationResult
from zrl.nameresolve import make_name_resolver, names
from zrl.streams import NameResolvingInferenceClient, Request
from zrl.workers.base import WorkerContext
from zrl.workers.messages import GenerationResponse
from zrl.workers.policy import PolicyWorker
from zrl.workers.treepo_common import open_paramdb
from zrl.workers.treepo_config import ModelSource, PolicyConfig


def test_a_version_pushed_while_the_policy_waits_for_requests_answers_them(tmp_path: Path,
                                                                          tiny_model_dir):  # noqa: F811
    resolver = make_name_resolver("memory://")
    context = WorkerContext("exp", "t1", "policy", 0, run_dir=str(tmp_path / "exp" / "t1"))
    source = ModelSource(path=str(tiny_model_dir))
    # A long wait for requests, and version checks rarer than a poll's start but sooner than the request comes.
    config = PolicyConfig(model=source, poll_timeout_s=3.0, version_check_s=0.2)
    worker = PolicyWorker(context, resolver)
    worker._configure(config)
    worker.config = config
    client = NameResolvingInferenceClient(resolver, names.inference_stream("exp", "t1", "policy"))
    try:
        worker._poll()  # checks the parameter DB (nothing newer), then waits for requests that do not come
        polling = threading.Thread(target=worker._poll)
        polling.start()  # checks again at once, then waits up to 3 s for a request
        time.sleep(0.05)
        trainer_db = open_paramdb(source, context, resolver)
        trainer_db.push("policy", AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), 1)
        time.sleep(0.4)
        stream_id = client.post({"prefix": [1, 2, 3], "max_new_tokens": 1})
        polling.join(timeout=30)
        responses = []
        deadline = time.monotonic() + 30
        while not responses and time.monotonic() < deadline:
            responses = [payload for sid, payload in client.poll_responses(timeout=0.5) if sid == stream_id]
        assert responses, "the policy never answered"
        assert responses[0]["version"] == 1, "the request that arrived after the push was answered by old weights"
        assert worker.counts["reloads"] == 1
    finally:
        client.close()
        worker._close()


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_policy_worker_started_mid_run_answers_with_the_newest_version_that_loads(tmp_path: Path,
                                                                                     tiny_model_dir):  # noqa: F811
    """A relaunched policy worker must not answer with the starting weights once the trainer has pushed: a corrupt
    newest version is passed over for the one before, and with no loadable version it refuses to start."""
    context = WorkerContext("exp", "t1", "policy", 1, run_dir=str(tmp_path / "runs" / "exp" / "t1"))
    config = PolicyConfig(model=ModelSource(path=str(tiny_model_dir)))
    resolver = make_name_resolver(f"memory://policy-{uuid.uuid4().hex}")
    paramdb = open_paramdb(config.model, context, resolver)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    for version in (1, 2, 3):
        paramdb.push("policy", model, version)
    corrupt(paramdb.version_path("policy", 3) / "model.safetensors")
    worker = PolicyWorker(context, resolver)
    client = None
    try:
        worker._configure(config)
        worker.config = config
        client = NameResolvingInferenceClient(resolver, names.inference_stream("exp", "t1", "policy"))
        request = client.post({"prefix": [1, 2, 3], "max_new_tokens": 2, "temperature": 1.0, "seed": 0})
        answers: dict = {}
        deadline = time.monotonic() + 30
        while request not in answers and time.monotonic() < deadline:
            worker._poll()
            answers.update(client.poll_responses(timeout=0.05))
        assert answers[request]["version"] == 2, answers
        stats = worker._stats()
        assert stats["first_version_served"] == 2 and stats["reload_failures"] == 1, stats
        # The engine's prefix cache reports in the status: one request, its prefix computed once.
        assert stats["engine"]["misses"] == 1 and stats["engine"]["computed_tokens"] == 2, stats
    finally:
        if client is not None:
            client.close()
        worker._close()

    corrupt(paramdb.version_path("policy", 2) / "model.safetensors")
    corrupt(paramdb.version_path("policy", 1) / "model.safetensors")
    refusing = PolicyWorker(context, resolver)
    try:
        with pytest.raises(RuntimeError, match=r"no version of model 'policy' in .* could be loaded, and this policy "
                                               r"worker will not serve the starting weights instead: version 3: .*"
                                               r"checksum mismatch"):
            refusing._configure(config)
    finally:
        refusing._close()
        resolver.close()
    assert paramdb.pins("policy") == {}  # neither left its pin behind


def test_a_malformed_request_is_refused_naming_its_field_and_the_rest_of_the_batch_is_answered():
    class Engine:
        version = 4

        def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
            return [GenerationResult(r.request_id, [len(r.prefix_ids)], [-0.5], False, self.version) for r in requests]

    class Server:
        answered: list = []

        def poll_requests(self, max_batch: int, timeout: float) -> list[Request]:
            payloads = [{"prefix": [1, 2], "max_new_tokens": 1}, {"prefix": [1], "max_new_tokens": "abc"},
                        {"prefix": [1, 2, 3], "max_new_tokens": 1}]
            return [Request(index, payload, b"rollout", 0.0) for index, payload in enumerate(payloads)]

        def respond_many(self, responses: list) -> None:
            self.answered.extend((request.id, answer) for request, answer in responses)

    worker = PolicyWorker.__new__(PolicyWorker)
    worker.config = PolicyConfig()
    worker.engine, worker.server = Engine(), Server()
    worker.counts = {"requests": 0, "refused": 0, "engine_calls": 0}
    worker.generate_s, worker.first_version_served, worker.next_version_check = 0.0, None, math.inf
    assert worker._poll().sample_count == 3
    assert worker.server.answered == [
        (0, GenerationResponse([2], [-0.5], False, 4).to_wire()),
        (1, {"error": "generation request: field 'max_new_tokens': expected an int, got 'abc'"}),
        (2, GenerationResponse([3], [-0.5], False, 4).to_wire())]
