"""Trees trained as packed sequences: every response token gets the logprob its own row would give it, and a
training step on packed trees equals the step on one row per trajectory."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from fixtures_tiny import save_random_model
from transformers import Qwen2ForCausalLM

from zrl.engines.hf import HFEngine, HFEngineConfig
from zrl.rl.advantage import AdvantageConfig
from zrl.rl.synthetic import generate_problems
from zrl.rl.tiny_model import load_tokenizer
from zrl.rl.train_step import OptimizerConfig, StepConfig, collate, make_optimizer, token_logprobs, train_step
from zrl.rl.tree import TreeSampler, TreeSamplerConfig
from zrl.rl.tree_packing import pack_trees, packed_token_logprobs


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_random_model(tmp_path_factory.mktemp("random-qwen2"))


@pytest.fixture(scope="module")
def trees(model_dir):
    """Real trees: the sampler driven by the transformers engine, with rewards that differ within each tree."""
    tokenizer = load_tokenizer(model_dir)
    engine = HFEngine(model_dir, HFEngineConfig(device="cpu", max_batch_size=64))
    try:
        prompts = [(p.uid, tokenizer(p.prompt, add_special_tokens=False)["input_ids"])
                   for p in generate_problems("train", 3, seed=3)]
        config = TreeSamplerConfig(width=6, branching=2, segment_len=5, max_depth=4, seed=1)
        result = TreeSampler(config, engine.eos_token_id, tokenizer.decode).run(prompts, engine.generate)
    finally:
        engine.close()
    for tree in result:
        for index, t in enumerate(tree.trajectories):
            t.reward = float(index % 3 == 0)
    return result


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI has none)")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def _model(model_dir, device: str = "cpu") -> Qwen2ForCausalLM:
    return Qwen2ForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).to(device)


def test_trees_share_their_prefixes(trees):
    trajectories = [t for tree in trees for t in tree.trajectories]
    assert any(len(t.segment_ids) >= 2 for t in trajectories), "the trees must branch for this test to mean much"
    packed = pack_trees(trajectories, pad_id=0)
    assert packed.input_ids.shape[0] == len(trees)
    one_row_each = sum(len(t.prompt_ids) + len(t.response_ids) for t in trajectories)
    assert packed.target_ids.numel() < sum(len(t.response_ids) for t in trajectories)
    assert int((packed.input_ids != 0).sum()) < one_row_each


@pytest.mark.parametrize("device", DEVICES)
def test_packed_logprobs_equal_those_of_one_row_per_trajectory(model_dir, trees, device):
    model = _model(model_dir, device)
    trajectories = [t for tree in trees for t in tree.trajectories]
    batch = collate(trajectories, [np.zeros(len(t.response_ids)) for t in trajectories], pad_id=0).to(device)
    with torch.no_grad():
        expected = token_logprobs(model, batch.input_ids, batch.attention_mask) * batch.mask
        got = packed_token_logprobs(model, pack_trees(trajectories, 0), len(trajectories), batch.input_ids.shape[1])
    assert torch.allclose(got, expected, atol=1e-5), float((got - expected).abs().max())
    # and they are the engine's own behaviour logprobs, up to float noise
    behaviour = batch.behaviour_logprobs * batch.mask
    assert float((got - behaviour).abs().max()) < 1e-4


@pytest.mark.parametrize(("micro_batch_tokens", "device"), [(8192, "cpu"), (40, "cpu"),
                                                             pytest.param(8192, "cuda", marks=CUDA)])
def test_a_step_on_packed_trees_equals_the_step_on_rows(model_dir, trees, micro_batch_tokens, device):
    trajectories = [t for tree in trees for t in tree.trajectories]
    gradients, metrics = {}, {}
    for pack in (False, True):
        model = _model(model_dir, device)
        config = StepConfig(OptimizerConfig(lr=1e-3, warmup_steps=0), AdvantageConfig(credit="segment"),
                            micro_batch_tokens=micro_batch_tokens, pack_trees=pack)
        optimizer, scheduler = make_optimizer(model, config.optimizer)
        metrics[pack] = train_step(model, optimizer, scheduler, trajectories, config, pad_id=0)
        gradients[pack] = {name: p.grad.clone() for name, p in model.named_parameters()}
    assert metrics[True]["packed_trees"] == 1.0 and metrics[False]["packed_trees"] == 0.0
    assert metrics[True]["micro_batches"] == (1.0 if micro_batch_tokens > 1000 else 3.0)
    for key in ("loss", "grad_norm", "clip_fraction"):
        assert metrics[True][key] == pytest.approx(metrics[False][key], rel=1e-4, abs=1e-7), key
    assert metrics[False]["grad_norm"] > 1e-3
    for name, gradient in gradients[True].items():
        scale = float(gradients[False][name].abs().max()) + 1e-8
        assert float((gradient - gradients[False][name]).abs().max()) < 1e-4 * scale + 1e-7, name


def test_two_trees_of_one_prompt_stay_apart(model_dir, trees):
    model = _model(model_dir)
    tree = trees[0].trajectories
    # the same prompt in two trees (two epochs): same uid and segment ids, another tree id
    twin = [dataclasses.replace(t, tree_id=f"{t.uid}@1") for t in tree]
    both = [*tree, *twin]
    packed = pack_trees(both, 0)
    assert packed.input_ids.shape[0] == 2
    batch = collate(both, [np.zeros(len(t.response_ids)) for t in both], 0)
    with torch.no_grad():
        expected = token_logprobs(model, batch.input_ids, batch.attention_mask) * batch.mask
        got = packed_token_logprobs(model, packed, len(both), batch.input_ids.shape[1])
    assert torch.allclose(got, expected, atol=1e-5)


def test_segments_that_do_not_cover_the_response_are_named(trees):
    bad = dataclasses.replace(trees[0].trajectories[0], segment_tokens=[1])
    with pytest.raises(ValueError, match=r"trajectory 0 of prompt .* do not cover its \d+ response tokens"):
        pack_trees([bad], 0)


def test_independent_samples_are_trained_as_rows_even_with_packing_on(model_dir, trees):
    """Independent samples share only their prompt: a packed row would cost more attention than it saves."""
    tokenizer = load_tokenizer(model_dir)
    engine = HFEngine(model_dir, HFEngineConfig(device="cpu", max_batch_size=64))
    try:
        prompts = [(p.uid, tokenizer(p.prompt, add_special_tokens=False)["input_ids"])
                   for p in generate_problems("train", 2, seed=4)]
        config = TreeSamplerConfig(width=4, segment_len=5, max_depth=4, seed=2, mode="independent")
        sampled = TreeSampler(config, engine.eos_token_id, tokenizer.decode).run(prompts, engine.generate)
    finally:
        engine.close()
    independent = [t for tree in sampled for t in tree.trajectories]
    for index, t in enumerate(independent):
        t.reward = float(index % 2)
    branching = [t for tree in trees for t in tree.trajectories]
    config = StepConfig(OptimizerConfig(lr=1e-5), AdvantageConfig(), pack_trees=True)
    model = _model(model_dir)
    optimizer, scheduler = make_optimizer(model, config.optimizer)
    assert train_step(model, optimizer, scheduler, independent, config, 0)["packed_trees"] == 0.0
    assert train_step(model, optimizer, scheduler, branching, config, 0)["packed_trees"] == 1.0
