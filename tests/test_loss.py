"""The clipped token-mean loss pinned against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from zrl.rl.loss import LossConfig, policy_loss


def _case():
    # tokens (ratio, A): (1.5, +1) (0.5, +1) (0.5, -1) (20, -1) (1, +2), then one padding token
    ratios = [1.5, 0.5, 0.5, 20.0, 1.0, 3.0]
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 2.0, 5.0]], dtype=torch.float64)
    old = torch.full((1, 6), -2.0, dtype=torch.float64)
    new = (old + torch.tensor([[math.log(r) for r in ratios]], dtype=torch.float64)).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    return new, old, adv, mask


def test_loss_value_by_hand():
    # per token loss = max(-A r, -A clip(r, 0.8, 1.28)), then min(., -10 A) for A < 0:
    #   (1.5, +1): max(-1.5, -1.28) = -1.28  (clipped)
    #   (0.5, +1): max(-0.5, -0.8)  = -0.5
    #   (0.5, -1): max(0.5, 0.8)    =  0.8   (clipped)
    #   (20, -1):  max(20, 1.28) = 20 -> dual clip min(20, 10) = 10
    #   (1, +2):   -2
    # token mean over the 5 real tokens: (-1.28 - 0.5 + 0.8 + 10 - 2) / 5 = 1.404
    new, old, adv, mask = _case()
    loss, metrics = policy_loss(new, old, adv, mask, LossConfig())
    assert loss.item() == pytest.approx(1.404)
    assert metrics["clip_fraction"] == pytest.approx(2 / 5)
    assert metrics["dual_clip_fraction"] == pytest.approx(1 / 5)
    assert metrics["clip_high_fraction"] == pytest.approx(1 / 5)
    assert metrics["clip_low_fraction"] == pytest.approx(1 / 5)
    assert metrics["ratio_max"] == pytest.approx(20.0)
    assert metrics["ratio_mean"] == pytest.approx((1.5 + 0.5 + 0.5 + 20 + 1) / 5)
    assert metrics["tokens"] == 5


def test_gradient_flows_only_through_unclipped_tokens():
    # d loss / d logp_new = -A r / N where the unclipped term is active, else 0:
    #   token 2: -(1)(0.5)/5 = -0.1; token 5: -(2)(1)/5 = -0.4; clipped, dual-clipped and padding tokens: 0
    new, old, adv, mask = _case()
    loss, _ = policy_loss(new, old, adv, mask, LossConfig())
    loss.backward()
    assert new.grad.tolist()[0] == pytest.approx([0.0, -0.1, 0.0, 0.0, -0.4, 0.0])


def test_equal_logprobs_give_minus_mean_advantage_and_no_mismatch():
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    adv = torch.tensor([[0.5, -1.5, 2.5]])
    loss, metrics = policy_loss(logp.clone(), logp, adv, torch.ones(1, 3), LossConfig())
    assert loss.item() == pytest.approx(-(0.5 - 1.5 + 2.5) / 3)
    assert metrics["clip_fraction"] == 0.0
    assert metrics["logprob_abs_diff_max"] == 0.0
    assert metrics["behaviour_kl"] == pytest.approx(0.0)


def test_mismatch_metrics():
    old = torch.tensor([[-1.0, -1.0, -1.0, 0.0]])
    new = torch.tensor([[-1.1, -0.7, -1.0, 9.0]])
    _, metrics = policy_loss(new, old, torch.zeros(1, 4), torch.tensor([[1, 1, 1, 0]]), LossConfig())
    assert metrics["logprob_diff_mean"] == pytest.approx((-0.1 + 0.3 + 0.0) / 3)
    assert metrics["logprob_abs_diff_mean"] == pytest.approx((0.1 + 0.3) / 3)
    assert metrics["logprob_abs_diff_max"] == pytest.approx(0.3)
    expected_kl = sum(math.exp(d) - 1 - d for d in (-0.1, 0.3, 0.0)) / 3
    assert metrics["behaviour_kl"] == pytest.approx(expected_kl)


def test_parts_with_the_batch_token_count_sum_to_the_batch_loss():
    new, old, adv, mask = _case()
    whole, _ = policy_loss(new, old, adv, mask, LossConfig())
    parts = [policy_loss(new[:, s], old[:, s], adv[:, s], mask[:, s], LossConfig(), token_count=5)[0]
             for s in (slice(0, 2), slice(2, 6))]
    assert (parts[0] + parts[1]).item() == pytest.approx(whole.item())
    with pytest.raises(ValueError, match="token_count=0"):
        policy_loss(new, old, adv, mask, LossConfig(), token_count=0)


def test_custom_clip_ranges():
    # ratio 1.5, A = 1 with eps_high 0.6 is not clipped: loss -1.5
    new = torch.tensor([[math.log(1.5)]])
    loss, metrics = policy_loss(new, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1),
                                LossConfig(eps_high=0.6))
    assert loss.item() == pytest.approx(-1.5)
    assert metrics["clip_fraction"] == 0.0


def test_bad_inputs_are_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"mask \(2, 2\)"):
        policy_loss(x, x, x, torch.ones(2, 2), LossConfig())
    with pytest.raises(ValueError, match="no response tokens"):
        policy_loss(x, x, x, torch.zeros(2, 3), LossConfig())
    with pytest.raises(ValueError, match="dual_clip=1.0"):
        LossConfig(dual_clip=1.0)
