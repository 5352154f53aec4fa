"""The TreePO training step without any socket: collation, logprob recompute, loss, clipping and the step."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from zrl.rl.advantage import AdvantageConfig
from zrl.rl.train_step import (
    OptimizerConfig,
    StepConfig,
    collate,
    make_optimizer,
    on_policy_mask,
    token_logprobs,
    train_step,
)
from zrl.rl.tree.trajectory import Trajectory

VOCAB = 40
PAD = 0


def small_model(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False, pad_token_id=PAD, eos_token_id=1)
    return Qwen2ForCausalLM(config).eval()


def engine_logprobs(model, prompt: list[int], response: list[int]) -> list[float]:
    """What an engine reports: the logprob of each response token after the prompt, from one full pass."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0].float()
    table = torch.log_softmax(logits, dim=-1)
    return [table[len(prompt) - 1 + i, tok].item() for i, tok in enumerate(response)]


def trajectory(model, uid: str, prompt: list[int], response: list[int], reward: float, segments: list[int],
               versions: list[int] | None = None, tree_id: str = "") -> Trajectory:
    lengths = [4] * (len(response) // 4) + ([len(response) % 4] if len(response) % 4 else [])
    assert len(lengths) == len(segments)
    return Trajectory(uid=uid, prompt_ids=prompt, response_ids=response,
                      logprobs=engine_logprobs(model, prompt, response), segment_ids=segments,
                      segment_tokens=lengths, versions=versions or [0] * len(segments), status="finished",
                      reward=reward, tree_id=tree_id or uid)


def batch(model, shared_first_segment: bool = False) -> list[Trajectory]:
    """Three prompts with four trajectories each; with `shared_first_segment`, the four begin with the same segment
    (a tree that branches after it), else they share only their prompt."""
    rng = np.random.default_rng(0)
    out = []
    for p in range(3):
        prompt = [int(x) for x in rng.integers(2, VOCAB, size=3 + p)]
        first = [int(x) for x in rng.integers(2, VOCAB, size=4)]
        for i in range(4):
            response = [int(x) for x in rng.integers(2, VOCAB, size=4 + 4 * ((i + p) % 3))]
            n_segments = (len(response) + 3) // 4
            segments = [10 * i + k for k in range(n_segments)]
            if shared_first_segment:
                response[:4], segments[0] = first, 0
            out.append(trajectory(model, f"p{p}", prompt, response, 1.0 if i == p % 4 else -1.0, segments))
    return out


def test_collate_aligns_each_response_token_with_its_logprob_and_advantage():
    model = small_model()
    trajectories = batch(model)
    advantages = [np.full(len(t.response_ids), float(i)) for i, t in enumerate(trajectories)]
    collated = collate(trajectories, advantages, PAD)
    logp = token_logprobs(model, collated.input_ids, collated.attention_mask)
    for row, t in enumerate(trajectories):
        positions = collated.mask[row].nonzero().squeeze(1)
        assert len(positions) == len(t.response_ids)
        assert positions[0].item() == len(t.prompt_ids) - 1
        # The trainer's own logprobs at the marked positions are the engine's, token for token.
        assert torch.allclose(logp[row, positions], torch.tensor(t.logprobs), atol=1e-5)
        assert torch.allclose(collated.behaviour_logprobs[row, positions], torch.tensor(t.logprobs))
        assert torch.all(collated.advantages[row, positions] == float(row))


def test_a_step_raises_rewarded_trajectories_and_lowers_the_others():
    model = small_model()
    trajectories = batch(model)
    config = StepConfig(OptimizerConfig(lr=3e-3, warmup_steps=0), AdvantageConfig())
    optimizer, scheduler = make_optimizer(model, config.optimizer)
    collated = collate(trajectories, [np.zeros(len(t.response_ids)) for t in trajectories], PAD)

    def sequence_logprobs() -> torch.Tensor:
        with torch.no_grad():
            return (token_logprobs(model, collated.input_ids, collated.attention_mask) * collated.mask).sum(1)

    before = sequence_logprobs()
    metrics = train_step(model, optimizer, scheduler, trajectories, config, PAD, on_policy_version=0)
    change = sequence_logprobs() - before
    rewarded = torch.tensor([t.reward > 0 for t in trajectories])
    assert change[rewarded].mean() > 0 > change[~rewarded].mean()
    # On-policy: the ratio is 1 and the engine's logprobs are the trainer's.
    assert metrics["logprob_mismatch_on_policy"] < 1e-5
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["clip_fraction"] == 0.0
    assert metrics["reward_mean"] == pytest.approx(np.mean([t.reward for t in trajectories]))
    assert metrics["tokens"] == sum(len(t.response_ids) for t in trajectories)
    assert 0 < metrics["grad_norm"]


def test_micro_batching_does_not_change_the_step():
    base = small_model()
    trajectories = batch(base)
    results = []
    for micro in (10_000, 16):
        model = copy.deepcopy(base)
        config = StepConfig(OptimizerConfig(lr=1e-2, warmup_steps=0, grad_clip=0.0), micro_batch_tokens=micro)
        optimizer, scheduler = make_optimizer(model, config.optimizer)
        metrics = train_step(model, optimizer, scheduler, trajectories, config, PAD)
        results.append((metrics, [p.grad.clone() for p in model.parameters()]))
    (whole, grads_whole), (micro, grads_micro) = results
    assert micro["micro_batches"] > whole["micro_batches"] == 1
    assert whole["loss"] == pytest.approx(micro["loss"], abs=1e-6)
    assert whole["grad_norm"] == pytest.approx(micro["grad_norm"], rel=1e-4)
    for a, b in zip(grads_whole, grads_micro, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_grad_norm_is_clipped_to_one():
    model = small_model()
    trajectories = batch(model)
    config = StepConfig(OptimizerConfig(lr=1e-3, warmup_steps=0, grad_clip=1e-3))
    optimizer, scheduler = make_optimizer(model, config.optimizer)
    train_step(model, optimizer, scheduler, trajectories, config, PAD)
    clipped = torch.norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    assert clipped.item() == pytest.approx(1e-3, rel=1e-3)


def test_mismatch_is_measured_only_on_tokens_of_the_current_version():
    model = small_model()
    t = trajectory(model, "p", [5, 6, 7], list(range(2, 14)), 1.0, [0, 1, 2], versions=[3, 4, 4])
    mask = on_policy_mask([t], 20, 4)
    assert mask[0].nonzero().squeeze(1).tolist() == list(range(2 + 4, 2 + 12))
    assert on_policy_mask([t], 20, None).sum() == 0
    # A stale trajectory: the engine's logprobs came from other weights, so no mismatch is claimed for it.
    other = small_model(seed=1)
    stale = trajectory(other, "p", [5, 6, 7], list(range(2, 14)), 1.0, [0, 1, 2], versions=[3, 3, 3])
    config = StepConfig(OptimizerConfig(warmup_steps=0))
    optimizer, scheduler = make_optimizer(model, config.optimizer)
    fresh = trajectory(model, "q", [5, 6], list(range(2, 10)), -1.0, [0, 1], versions=[4, 4])
    metrics = train_step(model, optimizer, scheduler, [stale, fresh], config, PAD, on_policy_version=4)
    assert metrics["on_policy_tokens"] == len(fresh.response_ids)
    assert metrics["logprob_mismatch_on_policy"] < 1e-5


def test_an_empty_batch_and_inconsistent_trajectories_are_refused():
    model = small_model()
    config = StepConfig()
    optimizer, scheduler = make_optimizer(model, config.optimizer)
    with pytest.raises(ValueError, match="no trajectories"):
        train_step(model, optimizer, scheduler, [], config, PAD)
    bad = trajectory(model, "p", [5, 6], [2, 3, 4, 5], 1.0, [0])
    bad.logprobs = bad.logprobs[:2]
    with pytest.raises(ValueError, match="4 response tokens, 2 logprobs"):
        collate([bad], [np.zeros(4)], PAD)
