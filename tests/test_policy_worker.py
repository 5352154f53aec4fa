"""The policy worker in-process, over a real inference stream: which version answers a request."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fixtures_tiny import tiny_model_dir  # noqa: F401
from transformers import AutoModelForCausalLM

from zrl.nameresolve import make_name_resolver, names
from zrl.streams import NameResolvingInferenceClient
from zrl.workers.base import WorkerContext
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
