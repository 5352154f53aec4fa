"""The DAPO-style clipped policy-gradient loss with dual clip, averaged over all response tokens of the batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LossConfig:
    """Clipping of the policy-gradient loss."""

    eps_low: float = 0.2
    """Lower clip range: the ratio is clipped below at 1 - eps_low."""
    eps_high: float = 0.28
    """Upper clip range (DAPO clip-higher): the ratio is clipped above at 1 + eps_high."""
    dual_clip: float = 10.0
    """c of the dual clip: for negative advantages the loss is at most -c * A. Must be > 1."""

    def __post_init__(self) -> None:
        if not (0 <= self.eps_low < 1 and self.eps_high >= 0 and self.dual_clip > 1):
            raise ValueError(f"LossConfig needs 0 <= eps_low < 1, eps_high >= 0 and dual_clip > 1; got "
                             f"eps_low={self.eps_low}, eps_high={self.eps_high}, dual_clip={self.dual_clip}")


LOSS_METRICS = ("loss", "clip_fraction", "clip_low_fraction", "clip_high_fraction", "dual_clip_fraction", "ratio_mean",
                "ratio_max", "logprob_diff_mean", "logprob_abs_diff_mean", "logprob_abs_diff_max", "behaviour_kl")
"""The metrics of `policy_loss` besides its token count."""


def policy_loss(logp_new: torch.Tensor, logp_behaviour: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, config: LossConfig,
                token_count: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped token-mean loss over the response tokens marked by `mask`, and its metrics.

    `token_count` is the number of response tokens of the whole batch when this call sees only a part of it
    (gradient accumulation, data parallel): the parts' losses then sum to the batch's token mean. None uses
    the tokens of `mask`. Metrics always average over this call's own tokens.

    All tensors have the same shape (typically [batch, response_len], padded). Per token, with
    r = exp(logp_new - logp_behaviour): loss = -min(r*A, clip(r, 1-eps_low, 1+eps_high)*A), and for A < 0 the
    dual clip caps it at -c*A, so a huge ratio on a bad token cannot blow up the step.
    """
    shapes = {t.shape for t in (logp_new, logp_behaviour, advantages, mask)}
    if len(shapes) != 1:
        raise ValueError(f"policy_loss inputs must share one shape; got logp_new {tuple(logp_new.shape)}, "
                         f"logp_behaviour {tuple(logp_behaviour.shape)}, advantages {tuple(advantages.shape)}, "
                         f"mask {tuple(mask.shape)}")
    mask = mask.to(logp_new.dtype)
    n_tokens = mask.sum()
    if n_tokens.item() == 0:
        raise ValueError("policy_loss got no response tokens (mask is all zero)")
    log_ratio = logp_new - logp_behaviour.detach()
    ratio = torch.exp(log_ratio)
    adv = advantages.detach().to(logp_new.dtype)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - config.eps_low, 1.0 + config.eps_high)
    per_token = torch.maximum(unclipped, clipped)
    dual_cap = -adv * config.dual_clip
    dual_applies = (adv < 0) & (per_token > dual_cap)
    per_token = torch.where(adv < 0, torch.minimum(per_token, dual_cap), per_token)
    if token_count is not None and token_count <= 0:
        raise ValueError(f"policy_loss token_count={token_count} must be > 0")
    loss = (per_token * mask).sum() / (n_tokens if token_count is None else token_count)

    with torch.no_grad():
        def masked_mean(x: torch.Tensor) -> float:
            return float((x.to(mask.dtype) * mask).sum() / n_tokens)

        on = mask > 0
        diff = (logp_new - logp_behaviour).detach()
        metrics = {
            "loss": float(loss.detach()),
            "clip_fraction": masked_mean(clipped > unclipped),
            "clip_low_fraction": masked_mean((ratio < 1.0 - config.eps_low) & (adv < 0)),
            "clip_high_fraction": masked_mean((ratio > 1.0 + config.eps_high) & (adv > 0)),
            "dual_clip_fraction": masked_mean(dual_applies),
            "ratio_mean": masked_mean(ratio.detach()),
            "ratio_max": float(ratio.detach()[on].max()),
            "logprob_diff_mean": masked_mean(diff),
            "logprob_abs_diff_mean": masked_mean(diff.abs()),
            "logprob_abs_diff_max": float(diff.abs()[on].max()),
            # k3 estimator of KL(behaviour || current): E[exp(d) - 1 - d] with d = logp_new - logp_behaviour
            "behaviour_kl": masked_mean(torch.exp(diff) - 1.0 - diff),
            "tokens": float(n_tokens),
        }
    return loss, metrics
