"""Trees as packed sequences: each token a tree's trajectories share is computed once when training.

The w trajectories of a TreePO tree share their prompt and their early segments. Training them as w padded rows
repeats the shared tokens in every row; a packed row holds the prompt once and every distinct segment once, and an
attention mask lets each token see only its own segment's earlier tokens and its ancestors (the path from the
root), with position ids counted along that path. The model then computes, for every token, exactly what it would
in the trajectory's own row. The logprob of each distinct response token is computed once and handed to every
trajectory that contains it, laid out as `collate` lays out its rows, so the loss is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from zrl.rl.tree.trajectory import Trajectory


@dataclass
class PackedTrees:
    """Packed rows (one per tree) and where each trajectory's response tokens find their logprob."""

    input_ids: torch.Tensor
    """[trees, length] token ids, right-padded."""
    position_ids: torch.Tensor
    """[trees, length] position of each token along its own path."""
    visible: torch.Tensor
    """[trees, length, length] bool: query token i may attend to key token j."""
    predictor: torch.Tensor
    """[targets] flat index (tree * length + position) of the token whose logits predict each target token."""
    target_ids: torch.Tensor
    """[targets] the distinct response tokens whose logprobs are computed."""
    slot_rows: torch.Tensor
    """[slots] trajectory row of each response token of each trajectory..."""
    slot_columns: torch.Tensor
    """[slots] ...its column in `collate`'s shifted layout (prompt length - 1 + index in the response)..."""
    slot_targets: torch.Tensor
    """[slots] ...and the target whose logprob it takes."""

    @property
    def tokens(self) -> int:
        return int(self.input_ids.numel())


class _Tree:
    """One packed row under construction."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.positions: list[int] = []
        self.blocks: list[tuple[int, int, list[tuple[int, int]]]] = []
        """Per node with tokens: its (start, end) and the ranges of its ancestors, which all its tokens see; each
        token also sees its own node's tokens up to itself."""
        self.nodes: dict[tuple, tuple[int, int, int, list[tuple[int, int]]]] = {}
        """node key -> (start, end, depth in tokens at its end, ranges of the node and its ancestors)."""

    def add_node(self, key: tuple, tokens: Sequence[int], parent: tuple | None) -> tuple[int, int, int]:
        if key in self.nodes:
            start, end, depth, _ = self.nodes[key]
            return start, end, depth
        if parent is None:
            base_depth, base_ranges = 0, []
        else:
            _, _, base_depth, base_ranges = self.nodes[parent]
        start = len(self.tokens)
        end = start + len(tokens)
        self.tokens.extend(int(token) for token in tokens)
        self.positions.extend(range(base_depth, base_depth + len(tokens)))
        if tokens:
            self.blocks.append((start, end, base_ranges))
        self.nodes[key] = (start, end, base_depth + len(tokens), [*base_ranges, (start, end)] if tokens else base_ranges)
        return start, end, base_depth + len(tokens)

    def last_index(self, key: tuple) -> int:
        """Index of the last token on the path ending with node `key` (that token predicts the next one)."""
        _, _, _, ranges = self.nodes[key]
        return ranges[-1][1] - 1


def tree_key(trajectory: Trajectory) -> str:
    """Trajectories of one tree share this key."""
    return trajectory.tree_id or trajectory.uid


def pack_trees(trajectories: Sequence[Trajectory], pad_id: int) -> PackedTrees:
    """Pack `trajectories` into one row per tree (see the module doc); rows of the result index `trajectories`."""
    trees: dict[str, _Tree] = {}
    targets: dict[tuple[str, int], int] = {}
    predictor: list[tuple[str, int]] = []
    target_ids: list[int] = []
    slots: list[tuple[int, int, int]] = []
    for row, trajectory in enumerate(trajectories):
        n_prompt, response = len(trajectory.prompt_ids), trajectory.response_ids
        if not n_prompt:
            raise ValueError(f"trajectory {row} of prompt {trajectory.uid!r} has an empty prompt")
        if sum(trajectory.segment_tokens) != len(response) or len(trajectory.segment_ids) != len(
                trajectory.segment_tokens):
            raise ValueError(f"trajectory {row} of prompt {trajectory.uid!r}: segments {trajectory.segment_ids} of "
                             f"{trajectory.segment_tokens} tokens do not cover its {len(response)} response tokens")
        name = tree_key(trajectory)
        tree = trees.setdefault(name, _Tree())
        parent: tuple = ("prompt", tuple(trajectory.prompt_ids))
        tree.add_node(parent, trajectory.prompt_ids, None)
        done = 0
        for segment_id, length in zip(trajectory.segment_ids, trajectory.segment_tokens, strict=True):
            tokens = tuple(response[done:done + length])
            key = (parent, segment_id, tokens)
            previous = tree.last_index(parent)
            start, _, _ = tree.add_node(key, tokens, parent)
            for offset, token in enumerate(tokens):
                position = start + offset
                target = targets.get((name, position))
                if target is None:
                    target = targets[(name, position)] = len(target_ids)
                    target_ids.append(token)
                    predictor.append((name, previous if offset == 0 else position - 1))
                slots.append((row, n_prompt - 1 + done + offset, target))
            done += length
            parent = key
    return _tensors(trees, predictor, target_ids, slots, pad_id)


def _tensors(trees: dict[str, _Tree], predictor: list[tuple[str, int]], target_ids: list[int],
             slots: list[tuple[int, int, int]], pad_id: int) -> PackedTrees:
    order = {name: index for index, name in enumerate(trees)}
    length = max(len(tree.tokens) for tree in trees.values())
    input_ids = torch.full((len(trees), length), pad_id, dtype=torch.long)
    positions = torch.zeros((len(trees), length), dtype=torch.long)
    # Padding sees only itself, so no query row is fully masked (a fully masked softmax row is NaN).
    visible = torch.eye(length, dtype=torch.bool).repeat(len(trees), 1, 1)
    causal = torch.ones((length, length), dtype=torch.bool).tril()
    for index, tree in enumerate(trees.values()):
        n = len(tree.tokens)
        input_ids[index, :n] = torch.tensor(tree.tokens)
        positions[index, :n] = torch.tensor(tree.positions)
        for start, end, above in tree.blocks:
            for first, last in above:
                visible[index, start:end, first:last] = True
            visible[index, start:end, start:end] = causal[: end - start, : end - start]
    flat_predictor = torch.tensor([order[name] * length + index for name, index in predictor], dtype=torch.long)
    slot_tensor = torch.tensor(slots, dtype=torch.long).reshape(-1, 3)
    return PackedTrees(input_ids, positions, visible, flat_predictor, torch.tensor(target_ids, dtype=torch.long),
                       slot_tensor[:, 0], slot_tensor[:, 1], slot_tensor[:, 2])


def packed_token_logprobs(model: torch.nn.Module, packed: PackedTrees, rows: int, width: int) -> torch.Tensor:
    """Logprobs of every response token of every trajectory in `collate`'s shifted layout, [rows, width - 1]
    (zero outside the response), from one forward pass over the packed trees."""
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    bias = torch.zeros(packed.visible.shape, dtype=dtype, device=device)
    bias.masked_fill_(~packed.visible.to(device), torch.finfo(dtype).min)
    logits = model(input_ids=packed.input_ids.to(device), attention_mask=bias[:, None],
                   position_ids=packed.position_ids.to(device)).logits
    logits = logits.reshape(-1, logits.shape[-1])[packed.predictor.to(device)].float()
    target_logprobs = torch.gather(torch.log_softmax(logits, dim=-1), 1, packed.target_ids.to(device)[:, None])[:, 0]
    out = torch.zeros((rows, width - 1), dtype=target_logprobs.dtype, device=device)
    return out.index_put((packed.slot_rows.to(device), packed.slot_columns.to(device)),
                         target_logprobs[packed.slot_targets.to(device)])
