"""The TreePO tree sampler: a transport-free state machine that turns prompts into trees of trajectories.

Each round, every active path of a prompt becomes one GenerationRequest (the prompt ids plus the path's response
ids as prefix, at most `segment_len` new tokens); the requests of one tree are issued together and in order. A
caller either drives it synchronously with `run(prompts, generate)` or asynchronously with `pending_requests()`
and `on_results(results)`, then collects finished trees with `pop_finished()`.
"""

from __future__ import annotations

import numbers
import random
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from zrl.engines.base import GenerationRequest, GenerationResult, SamplingParams
from zrl.rl.reward import has_boxed_answer
from zrl.rl.tree.config import TreeSamplerConfig
from zrl.rl.tree.rules import branch_total, cut_at_eos, even_split, has_repetition, softmax_split
from zrl.rl.tree.trajectory import Status, Trajectory, TreeResult, TreeStats

GenerateFn = Callable[[list[GenerationRequest]], list[GenerationResult]]


@dataclass
class _Path:
    segment_ids: list[int] = field(default_factory=list)
    response_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    segment_tokens: list[int] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)

    def copy(self) -> _Path:
        return _Path(list(self.segment_ids), list(self.response_ids), list(self.logprobs),
                     list(self.segment_tokens), list(self.versions))


@dataclass
class _Tree:
    uid: str
    tree_id: str
    prompt_ids: list[int]
    active: list[_Path]
    done: list[Trajectory] = field(default_factory=list)
    stats: TreeStats = field(default_factory=TreeStats)
    round_ids: list[str] = field(default_factory=list)
    received: dict[str, GenerationResult] = field(default_factory=dict)
    next_segment_id: int = 0


class TreeSampler:
    """Grows one tree per prompt until it holds exactly `config.width` trajectories.

    `eos_token_id` is the model's EOS id, or all of them when it has several: a path ends at the first of any.
    Every tree gets a `tree_id` that no other tree has, in this sampler or any other, even for the same prompt uid.
    """

    def __init__(self, config: TreeSamplerConfig, eos_token_id: int | Sequence[int],
                 decode: Callable[[Sequence[int]], str], has_answer: Callable[[str], bool] = has_boxed_answer):
        self.config = config
        self.eos_token_ids = _eos_ids(eos_token_id)
        self.eos_token_id = self.eos_token_ids[0]
        self.decode = decode
        self.has_answer = has_answer
        self._rng = random.Random(config.seed)
        self._trees: dict[str, _Tree] = {}
        self._in_flight: dict[str, _Tree] = {}
        self._max_new_tokens_of: dict[str, int] = {}
        self._finished: list[TreeResult] = []
        self._serial = 0
        # Drawn from the OS, not from the seeded rng: samplers with equal seeds (in other processes too) must
        # still give their trees distinct ids.
        self._tree_id_nonce = secrets.token_hex(6)
        self._tree_serial = 0

    # ---- public API -------------------------------------------------------------------------------------------

    def add_prompt(self, uid: str, prompt_ids: Sequence[int]) -> None:
        """Start a tree for a prompt; `uid` must not be in progress already."""
        if uid in self._trees:
            raise ValueError(f"prompt uid {uid!r} is already being sampled")
        if len(prompt_ids) == 0:
            raise ValueError(f"prompt uid {uid!r} has no prompt token ids")
        cfg = self.config
        if cfg.mode == "independent":
            n_start = cfg.width
        elif cfg.random_initial_divergence:
            n_start = self._rng.randint(cfg.divergence_min, cfg.divergence_max)
        else:
            n_start = cfg.branching
        self._trees[uid] = _Tree(uid, self._new_tree_id(uid), [int(t) for t in prompt_ids],
                                 [_Path() for _ in range(n_start)])

    @property
    def in_progress(self) -> int:
        """Prompts added and not yet finished."""
        return len(self._trees)

    def pending_requests(self) -> list[GenerationRequest]:
        """Requests for the next round of every tree that has none in flight; each tree's requests are contiguous."""
        requests = []
        for tree in self._trees.values():
            if tree.round_ids:
                continue
            for path in tree.active:
                request_id = f"{tree.uid}#{self._serial}"
                self._serial += 1
                tree.round_ids.append(request_id)
                self._in_flight[request_id] = tree
                max_new_tokens = self._max_new_tokens(path)
                self._max_new_tokens_of[request_id] = max_new_tokens
                requests.append(GenerationRequest(
                    prefix_ids=tree.prompt_ids + path.response_ids,
                    max_new_tokens=max_new_tokens,
                    sampling=SamplingParams(temperature=self.config.temperature, top_p=self.config.top_p,
                                            seed=self._rng.randrange(2**31)),
                    request_id=request_id))
            tree.stats.requests += len(tree.active)
        return requests

    def on_results(self, results: Sequence[GenerationResult]) -> None:
        """Feed back results in any order; a tree advances once all of its round's results are in.

        The whole batch is checked before anything changes, so a bad result leaves the sampler as it was.
        """
        seen = set()
        for result in results:
            rid = result.request_id
            if rid not in self._in_flight:
                raise ValueError(f"result for unknown or already answered request id {rid!r}")
            if rid in seen:
                raise ValueError(f"result for request id {rid!r} appears twice in one batch")
            seen.add(rid)
            if len(result.logprobs) != len(result.token_ids):
                raise ValueError(f"result {rid!r} has {len(result.token_ids)} tokens but "
                                 f"{len(result.logprobs)} logprobs")
            limit = self._max_new_tokens_of[rid]
            if len(result.token_ids) > limit:
                raise ValueError(f"result {rid!r} has {len(result.token_ids)} tokens but its request allowed "
                                 f"{limit} (max_new_tokens)")
        for result in results:
            del self._max_new_tokens_of[result.request_id]
            tree = self._in_flight.pop(result.request_id)
            tree.received[result.request_id] = result
            if len(tree.received) == len(tree.round_ids):
                self._finish_round(tree)

    def pop_finished(self) -> list[TreeResult]:
        """Trees completed since the last call, in completion order."""
        finished, self._finished = self._finished, []
        return finished

    def run(self, prompts: Sequence[tuple[str, Sequence[int]]], generate: GenerateFn) -> list[TreeResult]:
        """Sample every (uid, prompt_ids) to completion with a synchronous `generate`; results in prompt order."""
        for uid, prompt_ids in prompts:
            self.add_prompt(uid, prompt_ids)
        while self._trees:
            requests = self.pending_requests()
            results = generate(requests)
            if len(results) != len(requests):
                raise ValueError(f"generate returned {len(results)} results for {len(requests)} requests")
            self.on_results(results)
        order = {uid: i for i, (uid, _) in enumerate(prompts)}
        return sorted(self.pop_finished(), key=lambda r: order.get(r.uid, len(order)))

    # ---- one round --------------------------------------------------------------------------------------------

    def _new_tree_id(self, uid: str) -> str:
        self._tree_serial += 1
        return f"{uid}@{self._tree_id_nonce}.{self._tree_serial}"

    def _max_new_tokens(self, path: _Path) -> int:
        room = self.config.cap - len(path.response_ids)
        return room if self.config.mode == "independent" else min(self.config.segment_len, room)

    def _finish_round(self, tree: _Tree) -> None:
        cfg = self.config
        results = [tree.received[rid] for rid in tree.round_ids]
        paths = tree.active
        tree.round_ids, tree.received, tree.active = [], {}, []
        tree.stats.rounds += 1
        still_active: list[_Path] = []
        finished_this_round = 0
        for path, result in zip(paths, results, strict=True):
            tree.stats.decoded_tokens += len(result.token_ids)
            keep, eos = cut_at_eos(result.token_ids, self.eos_token_ids)
            # An engine may also stop on a stop token other than the EOS ids; it then reports eos itself.
            eos = eos or result.eos
            tokens = [int(t) for t in result.token_ids[:keep]]
            path.segment_ids.append(tree.next_segment_id)
            tree.next_segment_id += 1
            path.response_ids.extend(tokens)
            path.logprobs.extend(float(x) for x in result.logprobs[:keep])
            path.segment_tokens.append(len(tokens))
            path.versions.append(int(result.version))
            status = self._status(path, tokens, eos)
            if status is None:
                still_active.append(path)
            else:
                finished_this_round += 1
                self._terminate(tree, path, status)
        if len(tree.done) >= cfg.width:
            tree.stats.discarded += len(still_active)
            self._complete(tree)
        elif still_active:
            tree.active = self._branch(tree, still_active, finished_this_round)
        else:
            tree.active = self._fallback(tree)

    def _status(self, path: _Path, segment: list[int], eos: bool) -> Status | None:
        cfg = self.config
        if eos or not cfg.require_eos_with_answer:
            body = path.response_ids[:-1] if eos else path.response_ids
            # The whole response is searched so an answer split across a segment boundary still counts.
            if self.has_answer(self.decode(body)):
                return Status.FINISHED
        if eos:
            return Status.EOS_STOPPED
        if len(path.response_ids) >= cfg.cap:
            return Status.LENGTH_CAPPED
        # Independent mode normally ends in one round; the cap stops an engine that keeps returning short chunks.
        if len(path.segment_ids) >= cfg.max_depth:
            return Status.DEPTH_CAPPED
        if cfg.repetition_stop and has_repetition(self.decode(segment), cfg.repetition_substring_chars,
                                                  cfg.repetition_count):
            return Status.REPETITION_STOPPED
        return None

    def _terminate(self, tree: _Tree, path: _Path, status: Status) -> None:
        if len(tree.done) >= self.config.width:
            tree.stats.discarded += 1
            return
        tree.done.append(Trajectory(
            uid=tree.uid, prompt_ids=list(tree.prompt_ids), response_ids=path.response_ids, logprobs=path.logprobs,
            segment_ids=path.segment_ids, segment_tokens=path.segment_tokens, versions=path.versions,
            status=status.value, tree_id=tree.tree_id))
        tree.stats.statuses[status.value] = tree.stats.statuses.get(status.value, 0) + 1

    def _branch(self, tree: _Tree, active: list[_Path], finished_this_round: int) -> list[_Path]:
        cfg = self.config
        if cfg.mode == "independent":
            return active
        total = branch_total(cfg.width, len(tree.done), len(active), finished_this_round, cfg.branching)
        if cfg.split == "softmax":
            counts = softmax_split(total, [sum(p.logprobs) for p in active], cfg.split_temperature)
        else:
            counts = even_split(total, len(active))
        children = []
        for path, count in zip(active, counts, strict=True):
            children.append(path)
            children.extend(path.copy() for _ in range(count - 1))
        return children

    def _fallback(self, tree: _Tree) -> list[_Path]:
        cfg = self.config
        tree.stats.fallbacks += 1
        remaining = cfg.width - len(tree.done)
        if cfg.mode == "independent":
            return [_Path() for _ in range(remaining)]
        n_new = min(cfg.branching, remaining)
        # Only a leaf of two or more segments has a boundary strictly inside it to cut at.
        cuttable = [t for t in tree.done if len(t.segment_ids) >= 2]
        preferred = [t for t in cuttable if t.status in (Status.FINISHED.value, Status.EOS_STOPPED.value)]
        pool = preferred or cuttable
        if not pool:
            return [_Path() for _ in range(n_new)]
        leaf = self._rng.choice(pool)
        k = self._rng.randint(1, len(leaf.segment_ids) - 1)
        n_tokens = sum(leaf.segment_tokens[:k])
        prefix = _Path(list(leaf.segment_ids[:k]), list(leaf.response_ids[:n_tokens]),
                       list(leaf.logprobs[:n_tokens]), list(leaf.segment_tokens[:k]), list(leaf.versions[:k]))
        return [prefix] + [prefix.copy() for _ in range(n_new - 1)]

    def _complete(self, tree: _Tree) -> None:
        del self._trees[tree.uid]
        self._finished.append(TreeResult(uid=tree.uid, trajectories=tree.done, stats=tree.stats,
                                         tree_id=tree.tree_id))


def _eos_ids(eos_token_id: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(eos_token_id, numbers.Integral):
        return (int(eos_token_id),)
    ids = tuple(int(t) for t in eos_token_id)
    if not ids:
        raise ValueError("TreeSampler needs at least one EOS token id")
    return ids


def merge_stats(stats: Sequence[TreeStats]) -> TreeStats:
    """Sum the counters of many trees (for per-step metrics)."""
    total = TreeStats()
    for s in stats:
        total.decoded_tokens += s.decoded_tokens
        total.requests += s.requests
        total.rounds += s.rounds
        total.fallbacks += s.fallbacks
        total.discarded += s.discarded
        for name, count in s.statuses.items():
            total.statuses[name] = total.statuses.get(name, 0) + count
    return total
