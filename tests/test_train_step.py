"""The TreePO training step without any socket: collation, logprob recompute, loss, clipping and the step."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from zrl.rl.advantage import AdvantageConfig, batch_advantages
from zrl.rl.loss import LOSS_METRICS, LossConfig, policy_loss
from zrl.rl.train_step import (
    OptimizerConfig,
    StepConfig,
    accumulate_gradients,
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
    # One group with a right and a wrong answer, so both trajectories have an advantage and are trained.
    fresh = trajectory(model, "p", [5, 6], list(range(2, 10)), -1.0, [0, 1], versions=[4, 4])
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


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_the_learning_rate_warms_up_decays_to_its_floor_and_stays_there(decay: str):
    config = OptimizerConfig(lr=1e-3, warmup_steps=4, decay=decay, decay_steps=24, min_lr_ratio=0.1)
    optimizer, scheduler = make_optimizer(small_model(), config)
    rates = []
    for _ in range(30):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:5] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4, 1e-3])
    assert all(a > b for a, b in zip(rates[4:24], rates[5:25], strict=True))
    assert rates[14] == pytest.approx(5.5e-4)
    assert rates[24:] == pytest.approx([1e-4] * 6)


def test_a_constant_rate_stays_at_its_peak_and_a_bad_schedule_is_refused():
    config = OptimizerConfig(lr=1e-3, warmup_steps=0)
    assert [config.lr_factor(step) for step in (0, 10, 10_000)] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="decay must be one of constant, cosine, linear, got 'step'"):
        OptimizerConfig(decay="step")
    with pytest.raises(ValueError, match="lr must be > 0, got 0; min_lr_ratio must be between 0 and 1, got 2"):
        OptimizerConfig(lr=0, min_lr_ratio=2)


@pytest.mark.parametrize("decay_steps", [0, 3, 5])
def test_a_run_that_ends_in_its_warm_up_warms_up_and_never_divides_by_zero(decay_steps):
    config = OptimizerConfig(decay="cosine", warmup_steps=5, decay_steps=decay_steps, min_lr_ratio=0.25)
    assert [config.lr_factor(step) for step in range(5)] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])
    # Steps the run does not reach: the peak, then the floor.
    assert (config.lr_factor(5), config.lr_factor(6)) == pytest.approx((1.0, 0.25))


TREE_SCALED = AdvantageConfig(credit="trajectory", scale="tree")


def all_right(trajectories: list[Trajectory], uid: str | None = None) -> list[Trajectory]:
    """The trajectories with every one of prompt `uid` (None: of every prompt) rewarded 1: a group without
    advantage when advantages are relative to the group."""
    return [dataclasses.replace(t, reward=1.0) if uid in (None, t.uid) else t for t in trajectories]


def test_trajectories_without_advantage_stay_out_of_the_passes_and_the_step_is_the_same():
    base = small_model()
    trajectories = all_right(batch(base), "p0")
    config = StepConfig(OptimizerConfig(lr=1e-2, warmup_steps=0), TREE_SCALED)
    model = copy.deepcopy(base)
    optimizer, scheduler = make_optimizer(model, config.optimizer)
    rows = []
    model.register_forward_hook(lambda module, args, kwargs, out: rows.append(len(kwargs["input_ids"])),
                                with_kwargs=True)
    metrics = train_step(model, optimizer, scheduler, trajectories, config, PAD)

    reference = copy.deepcopy(base)
    total = float(sum(len(t.response_ids) for t in trajectories))
    sums = accumulate_gradients(reference, trajectories, batch_advantages(trajectories, TREE_SCALED), total,
                                config, PAD)
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)

    assert sum(rows) == 8 and metrics["trained_trajectories"] == 8 and metrics["trajectories"] == 12
    assert metrics["loss"] == pytest.approx(sums["loss"], abs=1e-7)
    assert metrics["trained_tokens"] < metrics["tokens"]
    # train_step leaves the (clipped) gradient it stepped on.
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(ours.grad, theirs.grad, atol=1e-7)


def test_a_batch_without_advantage_still_moves_the_weights_by_adams_momentum():
    base = small_model()
    config = StepConfig(OptimizerConfig(lr=1e-2, warmup_steps=0), TREE_SCALED)
    learning, uniform = batch(base), all_right(batch(base))
    models = []
    for explicit_zeros in (False, True):
        model = copy.deepcopy(base)
        optimizer, scheduler = make_optimizer(model, config.optimizer)
        train_step(model, optimizer, scheduler, learning, config, PAD)
        if explicit_zeros:
            for parameter in model.parameters():
                parameter.grad = torch.zeros_like(parameter)
            optimizer.step()
        else:
            before = [p.detach().clone() for p in model.parameters()]
            metrics = train_step(model, optimizer, scheduler, uniform, config, PAD)
            assert metrics["trained_trajectories"] == 0 and metrics["loss"] == 0.0
            assert metrics["clip_fraction"] == 0.0 and metrics["grad_norm"] == 0.0
            assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        models.append(model)
    for ours, zeros in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.allclose(ours, zeros, atol=1e-7)


def test_the_loss_reports_the_metrics_it_declares():
    model = small_model()
    trajectories = batch(model)
    collated = collate(trajectories, [np.ones(len(t.response_ids)) for t in trajectories], PAD)
    logp = token_logprobs(model, collated.input_ids, collated.attention_mask)
    _, metrics = policy_loss(logp, collated.behaviour_logprobs, collated.advantages, collated.mask, LossConfig())
    assert set(metrics) == {*LOSS_METRICS, "tokens"}
