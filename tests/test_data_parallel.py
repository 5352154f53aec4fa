"""Data-parallel training without sockets: the split of a batch over trainers, and that the trainers' shares,
each scaled by the global token count, add up to the gradient of one trainer on the whole batch."""

from __future__ import annotations

import copy

import pytest
import torch
from test_train_step import PAD, batch, small_model

from zrl.rl.advantage import AdvantageConfig, batch_advantages
from zrl.rl.data_parallel import split_by_tokens
from zrl.rl.train_step import StepConfig, accumulate_gradients, share_of


def test_the_split_covers_every_row_once_and_balances_tokens():
    lengths = [30, 5, 17, 17, 2, 40, 9, 9, 25, 1, 12]
    for world_size in (1, 2, 3, 4, len(lengths)):
        shards = split_by_tokens(lengths, world_size)
        assert len(shards) == world_size
        assert sorted(row for rows in shards for row in rows) == list(range(len(lengths)))
        assert all(rows and rows == sorted(rows) for rows in shards)
        tokens = [sum(lengths[row] for row in rows) for rows in shards]
        # Longest-first greedy: no trainer has more than one row's worth of tokens above another.
        assert max(tokens) - min(tokens) <= max(lengths), (world_size, tokens)
        assert split_by_tokens(lengths, world_size) == shards  # every trainer computes the same split
    assert [sum(lengths[r] for r in rows) for rows in split_by_tokens(lengths, 2)] == [84, 83]


def test_a_batch_with_fewer_rows_than_trainers_is_refused():
    with pytest.raises(ValueError, match="3 trajectories cannot be split over 4 trainers"):
        split_by_tokens([5, 5, 5], 4)
    with pytest.raises(ValueError, match="world_size=0"):
        split_by_tokens([5], 0)


def gradients(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def share_gradients(base, trajectories, advantages, rows, token_count, config, packed) -> tuple[list[torch.Tensor], dict]:
    model = copy.deepcopy(base).train()
    sums = accumulate_gradients(model, [trajectories[i] for i in rows], [advantages[i] for i in rows],
                                token_count, config, PAD, on_policy_version=0, packed=packed)
    return gradients(model), sums


def lopsided(n_rows: int, world_size: int) -> list[list[int]]:
    """One row for each trainer but the last, which takes the rest (shares of very different token counts)."""
    return [[r] for r in range(world_size - 1)] + [list(range(world_size - 1, n_rows))]


@pytest.mark.parametrize(("split", "packed"), [("balanced", False), ("balanced", True), ("lopsided", False)])
@pytest.mark.parametrize("world_size", [2, 3])
def test_the_shares_scaled_by_the_global_token_count_sum_to_the_whole_batch_gradient(world_size: int, split: str,
                                                                                      packed: bool):
    base = small_model()
    trajectories = batch(base)
    config = StepConfig(advantage=AdvantageConfig(credit="segment"), micro_batch_tokens=24)
    # Advantages over the global batch, as every trainer computes them: whitening sees every token.
    advantages = batch_advantages(trajectories, config.advantage)
    total = float(sum(len(t.response_ids) for t in trajectories))
    whole, whole_sums = share_gradients(base, trajectories, advantages, range(len(trajectories)), total, config,
                                        packed)
    if split == "balanced":
        shares_rows = [share_of(trajectories, packed, rank, world_size) for rank in range(world_size)]
        assert sorted(r for rows in shares_rows for r in rows) == list(range(len(trajectories)))
        if packed:  # whole trees: no tree is split between trainers
            assert all(len({trajectories[r].tree_id for r in rows}) == len(rows) // 4 for rows in shares_rows)
    else:
        shares_rows = lopsided(len(trajectories), world_size)

    shares = [share_gradients(base, trajectories, advantages, rows, total, config, packed) for rows in shares_rows]
    summed = [sum(grads) for grads in zip(*(g for g, _ in shares), strict=True)]
    for a, b in zip(whole, summed, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    assert sum(s["loss"] for _, s in shares) == pytest.approx(whole_sums["loss"], abs=1e-6)
    assert sum(s["clip_fraction"] for _, s in shares) == pytest.approx(whole_sums["clip_fraction"], abs=1e-6)
    assert max(s["ratio_max"] for _, s in shares) == pytest.approx(whole_sums["ratio_max"], abs=1e-6)
    assert sum(s["micro_batches"] for _, s in shares) >= whole_sums["micro_batches"] > 1

    if split == "lopsided":
        # The scaling matters: shares that each take their own token mean, averaged over the trainers, do not
        # give the batch's gradient once the shares hold different numbers of tokens.
        local = [share_gradients(base, trajectories, advantages, rows,
                                 float(sum(len(trajectories[i].response_ids) for i in rows)), config, packed)[0]
                 for rows in shares_rows]
        averaged = [sum(grads) / world_size for grads in zip(*local, strict=True)]
        assert max(float((a - b).abs().max()) for a, b in zip(whole, averaged, strict=True)) > 1e-3
