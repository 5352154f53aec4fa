"""The tree sampler driven by the real transformers engine, scored by the real verifier.

The model is a randomly initialised two-layer Qwen2 over the tiny model's character tokenizer: what is checked
here (exactly w trajectories, behaviour logprobs aligned with the response tokens across segment boundaries,
rewards) does not depend on trained weights, and it builds in a second.
"""

from __future__ import annotations

import pytest
import torch
from fixtures_tiny import save_random_model

from zrl.engines.hf import HFEngine, HFEngineConfig
from zrl.rl.synthetic import generate_problems
from zrl.rl.tiny_model import load_tokenizer
from zrl.rl.tree import TreeSampler, TreeSamplerConfig
from zrl.rl.verifier import Verdict, Verifier, VerifierConfig


def _teacher_forced_logprobs(model, prompt: list[int], response: list[int]) -> list[float]:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [logprobs[len(prompt) - 1 + i, tok].item() for i, tok in enumerate(response)]


@pytest.fixture(scope="module")
def random_model_dir(tmp_path_factory):
    return save_random_model(tmp_path_factory.mktemp("random-qwen2"))


def test_tree_sampling_end_to_end_with_the_hf_engine(random_model_dir):
    tokenizer = load_tokenizer(random_model_dir)
    engine = HFEngine(random_model_dir, HFEngineConfig(device="cpu", max_batch_size=32), version=7)
    try:
        problems = generate_problems("train", 2, seed=3)
        prompts = [(p.uid, tokenizer(p.prompt, add_special_tokens=False)["input_ids"]) for p in problems]

        def decode(ids):
            return tokenizer.decode(ids, skip_special_tokens=True)

        config = TreeSamplerConfig(width=4, branching=2, segment_len=6, max_depth=8, seed=1)
        trees = TreeSampler(config, engine.eos_token_id, decode).run(prompts, engine.generate)
        assert [t.uid for t in trees] == [p.uid for p in problems]
        assert any(len(t.segment_ids) >= 2 for tree in trees for t in tree.trajectories)
        for tree, (_, prompt_ids) in zip(trees, prompts, strict=True):
            assert len(tree.trajectories) == 4
            assert tree.stats.decoded_tokens >= 1
            for t in tree.trajectories:
                assert t.prompt_ids == prompt_ids
                assert set(t.versions) == {7}
                # behaviour logprobs line up with the response tokens across every segment boundary
                expected = _teacher_forced_logprobs(engine.model, prompt_ids, t.response_ids)
                assert max(abs(a - b) for a, b in zip(expected, t.logprobs, strict=True)) < 1e-3

        with Verifier(VerifierConfig(workers=1, timeout_s=20.0)) as verifier:
            truths = {p.uid: p.answer for p in problems}
            batch = [t for tree in trees for t in tree.trajectories]
            verdicts = verifier.score_trajectories(batch, truths, decode)
        assert all(t.reward in (1.0, -1.0) for t in batch)
        for t, v in zip(batch, verdicts, strict=True):
            assert (t.reward == 1.0) == (v is Verdict.CORRECT)
            if t.status == "finished":
                assert v is not Verdict.NO_ANSWER
    finally:
        engine.close()
