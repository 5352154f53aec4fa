"""One TreePO optimizer step on a batch of scored trajectories: collate, recompute logprobs, loss, clip, step.

No sockets here: the trainer worker feeds it trees from the sample stream, the lockstep benchmark and the tests
feed it trees from an in-process sampler. The batch is processed in micro-batches of at most
`micro_batch_tokens` padded tokens; their losses are scaled by the batch's response-token count, so the gradient
is the token mean over the whole batch whatever the micro-batching. With several trainers (`collective`), each
trains on its share of the batch with the same scaling, and their gradients are summed (`zrl.rl.data_parallel`).
Trajectories whose advantages are all zero stay out of the passes: their tokens count in the token mean, but they
add nothing to the gradient, so the step is the same for less work. The loss metrics (clip fraction, ratio,
logprob mismatch) are over the trajectories that were trained.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np
import torch

from zrl.rl.advantage import AdvantageConfig, batch_advantages
from zrl.rl.data_parallel import (
    Collective,
    fill_missing_gradients,
    reduce_sums,
    split_by_tokens,
    sum_gradients,
)
from zrl.rl.loss import LOSS_METRICS, LossConfig, policy_loss
from zrl.rl.tree.trajectory import Trajectory
from zrl.rl.tree_packing import pack_trees, packed_token_logprobs, tree_key

PACKABLE_ATTENTION = ("sdpa", "eager")
"""Attention implementations that take the packed trees' 4D mask."""


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW and gradient clipping of the policy."""

    lr: float = 2e-4
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.999
    """AdamW beta2."""
    warmup_steps: int = 5
    """Linear learning-rate warm-up steps; then `decay`."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0: no clipping)."""
    decay: Literal["constant", "cosine", "linear"] = "constant"
    """After the warm-up: "constant", or "cosine" / "linear" decay to `min_lr_ratio` * lr at step `decay_steps`."""
    decay_steps: int = 0
    """The step at which a decay reaches its floor, after which the rate stays there (0: the run's last step)."""
    min_lr_ratio: float = 0.1
    """The decay's floor, as a fraction of the peak rate."""

    def __post_init__(self) -> None:
        problems = [problem for problem, wrong in (
            (f"lr must be > 0, got {self.lr}", not self.lr > 0),
            (f"weight_decay must be >= 0, got {self.weight_decay}", not self.weight_decay >= 0),
            (f"beta1 and beta2 must be in [0, 1), got {self.beta1}, {self.beta2}",
             not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1)),
            (f"warmup_steps and decay_steps must be >= 0, got {self.warmup_steps}, {self.decay_steps}",
             self.warmup_steps < 0 or self.decay_steps < 0),
            (f"grad_clip must be >= 0 (0: no clipping), got {self.grad_clip}", not self.grad_clip >= 0),
            (f"min_lr_ratio must be between 0 and 1, got {self.min_lr_ratio}", not 0 <= self.min_lr_ratio <= 1),
            (f"decay must be one of {', '.join(LR_DECAYS)}, got {self.decay!r}", self.decay not in LR_DECAYS),
        ) if wrong]
        if problems:
            raise ValueError("; ".join(problems))

    def lr_factor(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based), as a fraction of the peak rate."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.decay == "constant":
            return 1.0
        # decay_steps is the run's length: one no longer than its warm-up never gets here before it ends.
        progress = min(1.0, (step - self.warmup_steps) / max(self.decay_steps - self.warmup_steps, 1))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if self.decay == "cosine" else 1 - progress
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * shape


LR_DECAYS = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class StepConfig:
    """Everything one training step needs to know."""

    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimizer and clipping."""
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    """How rewards become per-token advantages."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Clipping of the policy loss."""
    micro_batch_tokens: int = 8192
    """Most padded tokens in one forward/backward pass (bounds activation memory)."""
    pack_trees: bool = True
    """Train each tree as one packed sequence, its shared prefixes computed once (`zrl.rl.tree_packing`); the loss
    is the same as with one row per trajectory. Used with the sdpa and eager attention of transformers, and only
    for batches whose trees share response segments: independent samples share just their prompt, and one long
    packed row costs more attention than the prompt it saves."""


@dataclass
class Collated:
    """A batch as right-padded tensors; response positions are marked by `mask` and shifted by one (position t
    holds the logprob of token t+1)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mask: torch.Tensor
    behaviour_logprobs: torch.Tensor
    advantages: torch.Tensor

    def to(self, device: torch.device) -> Collated:
        return Collated(*(getattr(self, f.name).to(device) for f in fields(self)))


def collate(trajectories: Sequence[Trajectory], token_advantages: Sequence[np.ndarray], pad_id: int) -> Collated:
    """Pad prompt + response of every trajectory to one width, aligning response tokens with their logprobs."""
    if len(trajectories) != len(token_advantages):
        raise ValueError(f"{len(trajectories)} trajectories but {len(token_advantages)} advantage rows")
    width = max(len(t.prompt_ids) + len(t.response_ids) for t in trajectories)
    rows = len(trajectories)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    attention = torch.zeros((rows, width), dtype=torch.long)
    mask = torch.zeros((rows, width - 1), dtype=torch.float32)
    behaviour = torch.zeros((rows, width - 1), dtype=torch.float32)
    advantages = torch.zeros((rows, width - 1), dtype=torch.float32)
    for row, (t, adv) in enumerate(zip(trajectories, token_advantages, strict=True)):
        n_prompt, n_response = len(t.prompt_ids), len(t.response_ids)
        if len(t.logprobs) != n_response or len(adv) != n_response:
            raise ValueError(f"trajectory {row} of prompt {t.uid!r}: {n_response} response tokens, "
                             f"{len(t.logprobs)} logprobs, {len(adv)} advantages")
        input_ids[row, : n_prompt + n_response] = torch.tensor(t.prompt_ids + t.response_ids)
        attention[row, : n_prompt + n_response] = 1
        span = slice(n_prompt - 1, n_prompt - 1 + n_response)
        mask[row, span] = 1.0
        behaviour[row, span] = torch.tensor(t.logprobs, dtype=torch.float32)
        advantages[row, span] = torch.from_numpy(np.asarray(adv, dtype=np.float32))
    return Collated(input_ids, attention, mask, behaviour, advantages)


def on_policy_mask(trajectories: Sequence[Trajectory], width: int, version: int | None) -> torch.Tensor:
    """1 at the (shifted) positions of response tokens that weights of `version` generated, in `collate`'s layout.

    A trajectory's segments may come from different versions (the policy reloads between rounds), so the
    mismatch between engine and trainer is measured segment by segment.
    """
    out = torch.zeros((len(trajectories), width), dtype=torch.float32)
    if version is None:
        return out
    for row, t in enumerate(trajectories):
        start = len(t.prompt_ids) - 1
        for segment_version, n_tokens in zip(t.versions, t.segment_tokens, strict=True):
            if segment_version == version:
                out[row, start : start + n_tokens] = 1.0
            start += n_tokens
    return out


def token_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """log p(token t+1 | tokens <= t) for every position t, shape [rows, width - 1]."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    return torch.gather(torch.log_softmax(logits, dim=-1), 2, input_ids[:, 1:, None]).squeeze(2)


def make_optimizer(model: torch.nn.Module, config: OptimizerConfig) -> tuple[torch.optim.Optimizer,
                                                                              torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with a linear warm-up, then a constant or decaying learning rate (`OptimizerConfig.lr_factor`)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                                  weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, config.lr_factor)
    return optimizer, schedule


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, trajectories: Sequence[Trajectory],
               config: StepConfig, pad_id: int, on_policy_version: int | None = None,
               collective: Collective | None = None) -> dict[str, float]:
    """One optimizer step on scored `trajectories`; returns its metrics.

    `on_policy_version`: the version of the weights before this step; the logprob mismatch between the engine
    and this model is measured on the response tokens that version generated.

    `collective`: the group of trainers that share this step (`zrl.rl.data_parallel`). Each member passes the
    same global batch and trains on its share (whole trees when they are packed); gradients and metrics are
    combined over the group, so every member takes the step one trainer would take on the whole batch.
    """
    started = time.perf_counter()
    if not trajectories:
        raise ValueError("train_step got no trajectories")
    advantages = batch_advantages(trajectories, config.advantage)
    total_tokens = float(sum(len(t.response_ids) for t in trajectories))
    packed = (config.pack_trees and getattr(model.config, "_attn_implementation", None) in PACKABLE_ATTENTION
              and shares_segments(trajectories))
    # A trajectory whose advantages are all zero adds nothing to the gradient (its tokens still count in the
    # token mean): leaving it out of the forward and backward passes gives the same step for less work.
    learning = [row for row in range(len(trajectories)) if np.any(advantages[row])]
    rows = learning
    if collective is not None:
        rows = sorted(set(share_of(trajectories, packed, collective.rank, collective.world_size)) & set(learning))
    model.train()
    optimizer.zero_grad(set_to_none=True)
    sums = accumulate_gradients(model, [trajectories[i] for i in rows], [advantages[i] for i in rows],
                                total_tokens, config, pad_id, on_policy_version, packed)
    fill_missing_gradients(model)
    if collective is not None:
        sum_gradients(model, collective)
        sums = reduce_sums(sums, collective, max_keys=[key for key in sums if key.endswith("_max")])
    grad_norm = _clip(model, config.optimizer.grad_clip)
    optimizer.step()
    scheduler.step()
    mismatch_sum, mismatch_tokens = sums.pop(MISMATCH_SUM), sums.pop(ON_POLICY_TOKENS)
    trained_tokens = sums.pop(TRAINED_TOKENS)
    out = {key: value if key.endswith("_max") or key in UNSCALED_SUMS else value / max(trained_tokens, 1.0)
           for key, value in sums.items()}
    rewards = [float(t.reward) for t in trajectories if t.reward is not None]
    behaviour_sum = sum(float(np.sum(t.logprobs)) for t in trajectories)
    out.update({
        "grad_norm": grad_norm,
        "lr": float(scheduler.get_last_lr()[0]),
        "tokens": total_tokens,
        "trajectories": float(len(trajectories)),
        "trained_tokens": trained_tokens,
        "trained_trajectories": float(len(learning)),
        "reward_mean": float(np.mean(rewards)) if rewards else 0.0,
        "accuracy": float(np.mean([r > 0 for r in rewards])) if rewards else 0.0,
        "on_policy_tokens": mismatch_tokens,
        "behaviour_logprob_mean": behaviour_sum / total_tokens,
        "packed_trees": float(packed),
        "time_train_s": time.perf_counter() - started,
    })
    if mismatch_tokens:
        out["logprob_mismatch_on_policy"] = mismatch_sum / mismatch_tokens
    return out


MISMATCH_SUM = "mismatch_sum"
ON_POLICY_TOKENS = "on_policy_tokens"
TRAINED_TOKENS = "trained_tokens"
UNSCALED_SUMS = ("loss", "micro_batches")
"""Sums of `accumulate_gradients` that are totals already (the others are token-weighted sums of means)."""


def accumulate_gradients(model: torch.nn.Module, trajectories: Sequence[Trajectory],
                         token_advantages: Sequence[np.ndarray], total_tokens: float, config: StepConfig,
                         pad_id: int, on_policy_version: int | None = None,
                         packed: bool = False) -> dict[str, float]:
    """Add the loss gradient of `trajectories` (a batch, or one trainer's share of it) to the model's gradients,
    each token's loss divided by `total_tokens`, the response tokens of the whole batch; returns metric sums.
    With `packed`, whole trees are computed as packed sequences (`zrl.rl.tree_packing`).

    The sums: loss (the share's part of the batch loss), `micro_batches`, `mismatch_sum` and `on_policy_tokens`
    (the logprob mismatch on tokens of `on_policy_version`), `trained_tokens` (the response tokens of
    `trajectories`), each `*_max` metric of `policy_loss` as a maximum, and every other metric weighted by its
    tokens (divide by `trained_tokens` for the mean).
    """
    # Every key from the start, so that trainers of a group reduce the same keys whatever their shares.
    sums: dict[str, float] = {MISMATCH_SUM: 0.0, ON_POLICY_TOKENS: 0.0, TRAINED_TOKENS: 0.0, "micro_batches": 0.0,
                              **dict.fromkeys(LOSS_METRICS, 0.0)}
    if not trajectories:
        return sums
    device = next(model.parameters()).device
    batch = collate(trajectories, token_advantages, pad_id).to(device)
    on_policy = on_policy_mask(trajectories, batch.mask.shape[1], on_policy_version).to(device)
    if packed:
        groups = _tree_micro_batches(trajectories, config.micro_batch_tokens)
    else:
        groups = _micro_batches(batch.attention_mask, config.micro_batch_tokens)
    for rows in groups:
        width = int(batch.attention_mask[rows].sum(1).max())
        mask = batch.mask[rows, : width - 1]
        if packed:
            logp = packed_token_logprobs(model, pack_trees([trajectories[i] for i in rows], pad_id), len(rows), width)
        else:
            logp = token_logprobs(model, batch.input_ids[rows, :width], batch.attention_mask[rows, :width])
        behaviour = batch.behaviour_logprobs[rows, : width - 1]
        loss, metrics = policy_loss(logp, behaviour, batch.advantages[rows, : width - 1], mask, config.loss,
                                    token_count=total_tokens)
        loss.backward()
        n = float(mask.sum())
        for key, value in metrics.items():
            if key.endswith("_max"):
                sums[key] = max(sums[key], value)
            elif key not in ("tokens", "loss"):
                sums[key] += value * n
        sums["loss"] += metrics["loss"]
        sums[TRAINED_TOKENS] += n
        with torch.no_grad():
            on_mask = mask * on_policy[rows, : width - 1]
            sums[MISMATCH_SUM] += float(((logp.detach() - behaviour).abs() * on_mask).sum())
            sums[ON_POLICY_TOKENS] += float(on_mask.sum())
    sums["micro_batches"] = float(len(groups))
    return sums


def shares_segments(trajectories: Sequence[Trajectory]) -> bool:
    """Whether two trajectories of one tree begin with the same segment, so packing computes its tokens once."""
    seen: set[tuple[str, int]] = set()
    for trajectory in trajectories:
        if trajectory.segment_ids:
            first = (tree_key(trajectory), trajectory.segment_ids[0])
            if first in seen:
                return True
            seen.add(first)
    return False


def share_of(trajectories: Sequence[Trajectory], packed: bool, rank: int, world_size: int) -> list[int]:
    """The rows that trainer `rank` of `world_size` trains on, balanced by tokens: whole trees when they are packed
    (so each tree's shared tokens are still computed once), else single trajectories."""
    if packed:
        units = list(_trees(trajectories).values())
        sizes = [_packed_length([trajectories[row] for row in rows]) for rows in units]
    else:
        units = [[row] for row in range(len(trajectories))]
        sizes = [len(t.prompt_ids) + len(t.response_ids) for t in trajectories]
    share = split_by_tokens(sizes, world_size, "trees" if packed else "trajectories")[rank]
    return sorted(row for unit in share for row in units[unit])


def _trees(trajectories: Sequence[Trajectory]) -> dict[str, list[int]]:
    """The rows of each tree of the batch, in the order the trees first appear."""
    trees: dict[str, list[int]] = {}
    for row, trajectory in enumerate(trajectories):
        trees.setdefault(tree_key(trajectory), []).append(row)
    return trees


def _micro_batches(attention: torch.Tensor, max_tokens: int) -> list[list[int]]:
    """Rows grouped by length so that rows * longest row stays within `max_tokens` per group."""
    lengths = attention.sum(1).tolist()
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    for row in order:
        if current and (len(current) + 1) * lengths[row] > max_tokens:
            groups.append(current)
            current = []
        current.append(row)
    if current:
        groups.append(current)
    return groups


def _tree_micro_batches(trajectories: Sequence[Trajectory], max_tokens: int) -> list[list[int]]:
    """Rows grouped whole tree by whole tree so that trees * longest packed tree stays within `max_tokens`."""
    trees = _trees(trajectories)
    sizes = {name: _packed_length([trajectories[row] for row in rows]) for name, rows in trees.items()}
    groups: list[list[int]] = []
    current: list[int] = []
    count = 0
    for name in sorted(trees, key=lambda n: sizes[n]):
        if current and (count + 1) * sizes[name] > max_tokens:
            groups.append(current)
            current, count = [], 0
        current.extend(trees[name])
        count += 1
    if current:
        groups.append(current)
    return groups


def _packed_length(trajectories: Sequence[Trajectory]) -> int:
    """Tokens of the trajectories' tree once packed: each distinct prompt and segment path counted once."""
    seen: set[tuple] = set()
    total = 0
    for t in trajectories:
        path: tuple = (tuple(t.prompt_ids),)
        if path not in seen:
            seen.add(path)
            total += len(t.prompt_ids)
        for segment_id, length in zip(t.segment_ids, t.segment_tokens, strict=False):
            path = (*path, segment_id)
            if path not in seen:
                seen.add(path)
                total += length
    return total


def _clip(model: torch.nn.Module, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.norm(torch.stack([p.grad.detach().norm() for p in params])))
