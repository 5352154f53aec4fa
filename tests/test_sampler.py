"""The TreePO sampler state machine, driven by scripted generate functions (the sampler's whole contract).

Token ids in these tests: 0 is EOS; the fake tokenizer decodes 3 to "\\boxed{", 4 to "7", 5 to "}", 6 to "ab",
and any other id to one letter.
"""

from __future__ import annotations

import random
from collections import Counter

import msgpack
import pytest

from zrl.engines.base import GenerationRequest, GenerationResult
from zrl.rl.tree import Status, TreeResult, TreeSampler, TreeSamplerConfig, merge_stats

EOS = 0
PROMPT = [100, 101, 102]
_WORDS = {3: "\\boxed{", 4: "7", 5: "}", 6: "ab"}


def decode(ids):
    return "".join(_WORDS.get(t, chr(ord("a") + t % 26)) for t in ids)


class Table:
    """A generate function that answers round r, request i with table[r][i] (or `default`); logs every call."""

    def __init__(self, table=(), default=(1,), logprob=-0.5, version_is_round=False, honour_max=True):
        self.table = [list(r) for r in table]
        self.default = list(default)
        self.logprob = logprob
        self.version_is_round = version_is_round
        self.honour_max = honour_max
        self.calls: list[list[GenerationRequest]] = []

    def __call__(self, requests):
        r = len(self.calls)
        self.calls.append(list(requests))
        out = []
        for i, req in enumerate(requests):
            row = self.table[r] if r < len(self.table) else []
            tokens = list(row[i]) if i < len(row) else list(self.default)
            if self.honour_max:
                tokens = tokens[:req.max_new_tokens]
            lp = self.logprob(r, i) if callable(self.logprob) else self.logprob
            out.append(GenerationResult(req.request_id, tokens, [lp] * len(tokens), eos=EOS in tokens,
                                        version=r if self.version_is_round else 0))
        return out

    @property
    def round_sizes(self):
        return [len(c) for c in self.calls]


def sample(generate, **cfg) -> TreeResult:
    sampler = TreeSampler(TreeSamplerConfig(**cfg), eos_token_id=EOS, decode=decode)
    (tree,) = sampler.run([("p0", PROMPT)], generate)
    return tree


def prefix_groups(tree: TreeResult, k: int) -> list[int]:
    return sorted(Counter(tuple(t.segment_ids[:k]) for t in tree.trajectories).values())


def test_full_binary_tree_shares_segment_ids_by_prefix():
    gen = Table(default=[1, 2])
    tree = sample(gen, width=8, branching=2, segment_len=2, max_depth=3)
    assert gen.round_sizes == [2, 4, 8]
    assert len(tree.trajectories) == 8
    # default cap = d*l, so the length cap is hit at the same round as the depth cap and is checked first
    assert tree.stats.statuses == {"length_capped": 8}
    assert prefix_groups(tree, 1) == [4, 4]
    assert prefix_groups(tree, 2) == [2, 2, 2, 2]
    assert prefix_groups(tree, 3) == [1] * 8
    assert len({s for t in tree.trajectories for s in t.segment_ids}) == 2 + 4 + 8
    assert tree.stats.requests == 14 and tree.stats.rounds == 3
    assert tree.stats.decoded_tokens == 14 * 2
    assert tree.trajectory_tokens == 8 * 6
    assert tree.mean_depth == 3.0


def test_budget_limited_by_width_gives_the_remainder_to_the_last_path():
    gen = Table(default=[1])
    tree = sample(gen, width=5, branching=2, segment_len=1, max_depth=3, response_cap=100)
    assert gen.round_sizes == [2, 4, 5]
    assert tree.stats.statuses == {"depth_capped": 5}
    assert prefix_groups(tree, 2) == [1, 1, 1, 2]
    last_two = tree.trajectories[-2:]
    assert last_two[0].segment_ids[:2] == last_two[1].segment_ids[:2]


def test_width_is_capped_when_more_paths_terminate_than_remain():
    gen = Table(default=[EOS])
    tree = sample(gen, width=3, branching=4, segment_len=2, max_depth=3)
    assert gen.round_sizes == [4]
    assert len(tree.trajectories) == 3
    assert tree.stats.discarded == 1
    assert tree.stats.statuses == {"eos_stopped": 3}


def test_active_paths_are_dropped_once_width_is_reached():
    # round 0: 4 paths, one stops -> remaining 2, |P| 3 -> total max(min(2, 16), 3) = 3
    # round 1: two stop -> 3 done = w, the third active path is dropped
    gen = Table([[[EOS], [1], [1], [1]], [[EOS], [EOS], [1]]])
    tree = sample(gen, width=3, branching=4, segment_len=1, max_depth=5, response_cap=100)
    assert gen.round_sizes == [4, 3]
    assert len(tree.trajectories) == 3
    assert tree.stats.discarded == 1


def test_eos_at_index_zero_ends_the_path_and_later_tokens_are_discarded():
    gen = Table(default=[EOS, 7, 8])
    tree = sample(gen, width=2, branching=2, segment_len=3, max_depth=4)
    for t in tree.trajectories:
        assert t.response_ids == [EOS]
        assert t.logprobs == [-0.5]
        assert t.segment_tokens == [1]
        assert t.status == "eos_stopped"
    assert tree.stats.decoded_tokens == 6


def test_eos_mid_segment_truncates_the_rest():
    tree = sample(Table(default=[7, EOS, 8, 9]), width=1, branching=1, segment_len=4, max_depth=4)
    assert tree.trajectories[0].response_ids == [7, EOS]
    assert tree.trajectories[0].logprobs == [-0.5, -0.5]


def test_answer_with_eos_is_finished_but_eos_alone_is_not():
    gen = Table([[[3, 4, 5, EOS], [7, EOS]]])
    tree = sample(gen, width=2, branching=2, segment_len=4, max_depth=3)
    assert [t.status for t in tree.trajectories] == ["finished", "eos_stopped"]


def test_answer_without_eos_keeps_the_path_active_by_default():
    # round 0 writes the answer, round 1 ends with EOS: finished only then
    gen = Table([[[3, 4, 5]], [[EOS]]])
    tree = sample(gen, width=1, branching=1, segment_len=3, max_depth=5)
    assert gen.round_sizes == [1, 1]
    assert tree.trajectories[0].status == "finished"
    assert tree.trajectories[0].response_ids == [3, 4, 5, EOS]


def test_boxed_alone_option_finishes_on_the_answer():
    gen = Table([[[3, 4, 5]]])
    tree = sample(gen, width=1, branching=1, segment_len=3, max_depth=5, require_eos_with_answer=False)
    assert gen.round_sizes == [1]
    assert tree.trajectories[0].status == "finished"


def test_answer_split_across_a_segment_boundary_counts():
    gen = Table([[[3, 4]], [[5, EOS]]])
    tree = sample(gen, width=1, branching=1, segment_len=2, max_depth=5)
    assert tree.trajectories[0].status == "finished"


def test_incomplete_answer_with_eos_is_eos_stopped():
    tree = sample(Table([[[3, 4, EOS]]]), width=1, branching=1, segment_len=3, max_depth=5)
    assert tree.trajectories[0].status == "eos_stopped"


def test_length_cap_shrinks_the_last_request():
    gen = Table(default=[1, 1, 1, 1])
    tree = sample(gen, width=1, branching=1, segment_len=4, max_depth=6, response_cap=10)
    assert [c[0].max_new_tokens for c in gen.calls] == [4, 4, 2]
    assert tree.trajectories[0].status == "length_capped"
    assert tree.trajectories[0].segment_tokens == [4, 4, 2]
    assert len(tree.trajectories[0].response_ids) == len(tree.trajectories[0].logprobs) == 10
    with pytest.raises(ValueError, match="has 4 tokens but its request allowed 2"):
        sample(Table(default=[1, 1, 1, 1], honour_max=False), width=1, branching=1, segment_len=4, max_depth=6,
               response_cap=10)


def test_depth_cap_when_the_length_cap_is_not_reached():
    tree = sample(Table(default=[1]), width=1, branching=1, segment_len=2, max_depth=3)
    assert tree.trajectories[0].status == "depth_capped"
    assert tree.trajectories[0].segment_tokens == [1, 1, 1]


@pytest.mark.parametrize(("segment", "cfg", "expected"), [
    # answer + EOS at the length cap and the depth cap: FINISHED is checked first
    ([3, 4, 5, EOS], {"segment_len": 4, "max_depth": 1}, "finished"),
    # EOS exactly at the length cap: EOS_STOPPED before LENGTH_CAPPED
    ([1, 1, 1, EOS], {"segment_len": 4, "max_depth": 1}, "eos_stopped"),
    # length cap and depth cap together: LENGTH_CAPPED first
    ([1, 1, 1, 1], {"segment_len": 4, "max_depth": 1}, "length_capped"),
    # repetition at the depth cap: DEPTH_CAPPED first
    ([6, 6, 6], {"segment_len": 4, "max_depth": 1, "response_cap": 50, "repetition_stop": True,
                 "repetition_substring_chars": 2, "repetition_count": 3}, "depth_capped"),
    ([6, 6, 6], {"segment_len": 4, "max_depth": 2, "response_cap": 50, "repetition_stop": True,
                 "repetition_substring_chars": 2, "repetition_count": 3}, "repetition_stopped"),
])
def test_status_checks_run_in_the_documented_order(segment, cfg, expected):
    tree = sample(Table([[segment]]), width=1, branching=1, **cfg)
    assert tree.trajectories[0].status == expected


def test_repetition_stop_is_off_by_default():
    gen = Table([[[6, 6, 6]]], default=[EOS])
    tree = sample(gen, width=1, branching=1, segment_len=3, max_depth=4, repetition_substring_chars=2,
                  repetition_count=3)
    assert gen.round_sizes == [1, 1]
    assert tree.trajectories[0].status == "eos_stopped"


def test_fallback_cuts_a_finished_leaf_at_a_segment_boundary():
    # round 0: 2 paths continue -> 4 children; round 1: all 4 stop with EOS (4 < w = 6), nothing active:
    # fallback cuts a 2-segment leaf after its first segment and adds min(b, remaining) = 2 paths.
    gen = Table([[[1, 2], [3, 8]], [[EOS]] * 4, [[EOS], [EOS]]], version_is_round=True)
    tree = sample(gen, width=6, branching=2, segment_len=2, max_depth=4)
    assert gen.round_sizes == [2, 4, 2]
    assert tree.stats.fallbacks == 1
    assert len(tree.trajectories) == 6
    first, late = tree.trajectories[:4], tree.trajectories[4:]
    assert late[0].segment_ids[0] == late[1].segment_ids[0]
    assert late[0].segment_ids[0] in {t.segment_ids[0] for t in first}
    assert late[0].segment_ids[1] != late[1].segment_ids[1]
    assert not {late[0].segment_ids[1], late[1].segment_ids[1]} & {s for t in first for s in t.segment_ids}
    cut_prefix = late[0].response_ids[:2]
    assert cut_prefix in ([1, 2], [3, 8])
    for req in gen.calls[2]:
        assert req.prefix_ids == PROMPT + cut_prefix
    for t in late:
        assert t.versions == [0, 2]
        assert t.segment_tokens == [2, 1]
        assert len(t.logprobs) == 3
    # the new paths join the subgroup of the prefix they share
    assert prefix_groups(tree, 1) == [2, 4]


@pytest.mark.parametrize("seed", range(6))
def test_fallback_prefers_finished_or_eos_stopped_leaves(seed):
    # round 1: one of four 2-segment leaves ends with EOS, three hit the depth cap
    gen = Table([[[1], [2]], [[EOS], [1], [1], [1]]], default=[EOS])
    tree = sample(gen, width=6, branching=2, segment_len=1, max_depth=2, response_cap=50, seed=seed)
    assert tree.stats.fallbacks == 1
    eos_leaf = tree.trajectories[0]
    assert eos_leaf.status == "eos_stopped" and len(eos_leaf.segment_ids) == 2
    for t in tree.trajectories[4:]:
        assert t.segment_ids[0] == eos_leaf.segment_ids[0]


def test_fallback_restarts_from_the_prompt_when_no_leaf_can_be_cut():
    gen = Table(default=[EOS])
    tree = sample(gen, width=4, branching=2, segment_len=2, max_depth=4)
    assert gen.round_sizes == [2, 2]
    assert tree.stats.fallbacks == 1
    assert all(req.prefix_ids == PROMPT for req in gen.calls[1])
    assert len({t.segment_ids[0] for t in tree.trajectories}) == 4


def test_fallback_adds_no_more_paths_than_remain():
    gen = Table(default=[EOS])
    tree = sample(gen, width=3, branching=2, segment_len=2, max_depth=4)
    assert gen.round_sizes == [2, 1]
    assert len(tree.trajectories) == 3


def _random_generate(rng: random.Random):
    def generate(requests):
        out = []
        for req in requests:
            n = rng.randint(0, req.max_new_tokens)
            tokens = [rng.choice([EOS, 1, 2, 3, 4, 5, 6, 7]) if rng.random() < 0.3 else rng.randint(1, 9)
                      for _ in range(n)]
            out.append(GenerationResult(req.request_id, tokens, [-rng.random() for _ in tokens],
                                        eos=EOS in tokens, version=rng.randint(0, 3)))
        return out
    return generate


@pytest.mark.parametrize("seed", range(12))
def test_invariants_under_random_generation(seed):
    rng = random.Random(seed)
    cfg = TreeSamplerConfig(width=rng.randint(1, 12), branching=rng.randint(1, 4), segment_len=rng.randint(1, 4),
                            max_depth=rng.randint(1, 6), split=rng.choice(["even", "softmax"]),
                            random_initial_divergence=rng.random() < 0.3, repetition_stop=rng.random() < 0.3,
                            repetition_substring_chars=2, repetition_count=2, seed=seed)
    sampler = TreeSampler(cfg, eos_token_id=EOS, decode=decode)
    trees = sampler.run([(f"p{i}", PROMPT + [i]) for i in range(3)], _random_generate(rng))
    assert [t.uid for t in trees] == ["p0", "p1", "p2"]
    for tree in trees:
        assert len(tree.trajectories) == cfg.width
        assert sum(tree.stats.statuses.values()) == cfg.width
        by_prefix: dict[tuple, list[int]] = {}
        for t in tree.trajectories:
            assert t.status in {s.value for s in Status}
            assert len(t.response_ids) == len(t.logprobs) == sum(t.segment_tokens) <= cfg.cap
            assert len(t.segment_ids) == len(t.segment_tokens) == len(t.versions) <= cfg.max_depth
            assert EOS not in t.response_ids[:-1]
            # trajectories with the same segment-id prefix have the same response tokens up to it
            for k in range(1, len(t.segment_ids) + 1):
                key = tuple(t.segment_ids[:k])
                tokens = t.response_ids[:sum(t.segment_tokens[:k])]
                assert by_prefix.setdefault(key, tokens) == tokens
    assert sampler.in_progress == 0


def test_requests_of_each_tree_are_contiguous_and_carry_the_sampling_settings():
    gen = Table(default=[1])
    sampler = TreeSampler(TreeSamplerConfig(width=4, branching=2, segment_len=1, max_depth=3, temperature=0.7,
                                            top_p=0.9), eos_token_id=EOS, decode=decode)
    sampler.run([("a", [50, 51]), ("b", [60])], gen)
    for call in gen.calls:
        uids = [req.request_id.split("#")[0] for req in call]
        assert uids == sorted(uids)
        assert len({req.request_id for req in call}) == len(call)
        assert len({req.sampling.seed for req in call}) == len(call)
        for req in call:
            prompt = [50, 51] if req.request_id.startswith("a#") else [60]
            assert req.prefix_ids[:len(prompt)] == prompt
            assert req.sampling.temperature == 0.7 and req.sampling.top_p == 0.9
            assert req.max_new_tokens == 1


def test_async_api_accepts_results_in_any_order_and_in_parts():
    cfg = TreeSamplerConfig(width=6, branching=2, segment_len=2, max_depth=3, seed=3)

    def policy(requests):
        return [GenerationResult(r.request_id, [1 + r.sampling.seed % 5, EOS if r.sampling.seed % 3 == 0 else 2],
                                 [-0.1, -0.2], eos=r.sampling.seed % 3 == 0, version=1) for r in requests]

    sync = TreeSampler(cfg, eos_token_id=EOS, decode=decode).run([("p", PROMPT)], policy)[0]
    sampler = TreeSampler(cfg, eos_token_id=EOS, decode=decode)
    sampler.add_prompt("p", PROMPT)
    shuffle = random.Random(0)
    while sampler.in_progress:
        requests = sampler.pending_requests()
        assert sampler.pending_requests() == []  # nothing new while the round is in flight
        results = policy(requests)
        shuffle.shuffle(results)
        half = len(results) // 2
        sampler.on_results(results[:half])
        assert sampler.pending_requests() == []
        sampler.on_results(results[half:])
    (tree,) = sampler.pop_finished()

    def without_tree_id(t):
        return {k: v for k, v in t.to_dict().items() if k != "tree_id"}

    assert [without_tree_id(t) for t in tree.trajectories] == [without_tree_id(t) for t in sync.trajectories]
    assert tree.tree_id != sync.tree_id
    assert sampler.pop_finished() == []


def test_bad_results_are_rejected_without_changing_state():
    sampler = TreeSampler(TreeSamplerConfig(width=2, branching=2, segment_len=2, max_depth=2),
                          eos_token_id=EOS, decode=decode)
    sampler.add_prompt("p", PROMPT)
    requests = sampler.pending_requests()
    good = GenerationResult(requests[0].request_id, [1, 2], [-0.1, -0.1], eos=False, version=0)
    with pytest.raises(ValueError, match="unknown or already answered request id 'nope'"):
        sampler.on_results([good, GenerationResult("nope", [1], [-0.1], eos=False, version=0)])
    with pytest.raises(ValueError, match="2 tokens but 1 logprobs"):
        sampler.on_results([GenerationResult(requests[1].request_id, [1, 2], [-0.1], eos=False, version=0)])
    with pytest.raises(ValueError, match="appears twice"):
        sampler.on_results([good, good])
    sampler.on_results([good])
    with pytest.raises(ValueError, match="already answered"):
        sampler.on_results([good])
    sampler.on_results([GenerationResult(requests[1].request_id, [EOS], [-0.1], eos=True, version=0)])
    assert len(sampler.pending_requests()) == 1  # next round: remaining 1 -> one child of the active path
    with pytest.raises(ValueError, match="'p' is already being sampled"):
        sampler.add_prompt("p", PROMPT)


def test_independent_mode_draws_w_full_length_samples():
    gen = Table(default=[1] * 6)
    tree = sample(gen, width=4, branching=2, segment_len=2, max_depth=3, mode="independent")
    assert gen.round_sizes == [4]
    assert [r.max_new_tokens for r in gen.calls[0]] == [6] * 4
    assert tree.stats.statuses == {"length_capped": 4}
    assert len({t.segment_ids[0] for t in tree.trajectories}) == 4
    assert all(len(t.segment_ids) == 1 for t in tree.trajectories)
    assert tree.stats.decoded_tokens == 24


def test_random_initial_divergence_starts_between_two_and_eight_paths():
    starts = set()
    for seed in range(20):
        gen = Table(default=[EOS])
        tree = sample(gen, width=16, branching=2, segment_len=1, max_depth=2, random_initial_divergence=True,
                      seed=seed)
        starts.add(gen.round_sizes[0])
        assert len(tree.trajectories) == 16
    assert starts <= set(range(2, 9))
    assert len(starts) > 1


def test_softmax_split_gives_more_children_to_the_likelier_path():
    # round 0: path 0 has logprob 0, path 1 logprob -50 per token; total = 4 -> one each plus both extra to path 0
    gen = Table([[[1], [2]]], default=[EOS], logprob=lambda r, i: 0.0 if (r, i) == (0, 0) else -50.0)
    sample(gen, width=8, branching=2, segment_len=1, max_depth=3, split="softmax", split_temperature=1.0)
    assert [req.prefix_ids[-1] for req in gen.calls[1]] == [1, 1, 1, 2]
    even = Table([[[1], [2]]], default=[EOS])
    sample(even, width=8, branching=2, segment_len=1, max_depth=3)
    assert [req.prefix_ids[-1] for req in even.calls[1]] == [1, 1, 2, 2]


def test_tree_result_round_trips_through_msgpack():
    tree = sample(Table([[[3, 4, 5, EOS], [1, 1, 1, 1]]], default=[EOS]), width=3, branching=2, segment_len=4,
                  max_depth=3, response_cap=20)
    tree.trajectories[0].reward = 1.0
    wire = msgpack.unpackb(msgpack.packb(tree.to_dict()))
    again = TreeResult.from_dict(wire)
    assert again.to_dict() == tree.to_dict()
    assert again.trajectories[0].reward == 1.0
    with pytest.raises(ValueError, match=r"unknown fields \['extra'\]"):
        TreeResult.from_dict({**tree.to_dict(), "extra": 1})
    broken = tree.to_dict()
    del broken["trajectories"][0]["logprobs"]
    with pytest.raises(ValueError, match=r"Trajectory.from_dict: unknown fields \[\], missing fields \['logprobs'\]"):
        TreeResult.from_dict(broken)


def test_merge_stats_sums_counters():
    trees = [sample(Table(default=[EOS]), width=4, branching=2, segment_len=2, max_depth=4, seed=s)
             for s in range(3)]
    total = merge_stats([t.stats for t in trees])
    assert total.statuses == {"eos_stopped": 12}
    assert total.fallbacks == 3 and total.requests == 12


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="width=0"):
        TreeSamplerConfig(width=0)
    with pytest.raises(ValueError, match="split='best'"):
        TreeSamplerConfig(split="best")
    with pytest.raises(ValueError, match="mode='beam'"):
        TreeSamplerConfig(mode="beam")


def test_every_tree_gets_an_id_unique_across_samplers_and_repeats():
    cfg = TreeSamplerConfig(width=2, branching=2, segment_len=1, max_depth=2)
    first = TreeSampler(cfg, eos_token_id=EOS, decode=decode)
    same_seed = TreeSampler(cfg, eos_token_id=EOS, decode=decode)
    trees = first.run([("p", PROMPT)], Table(default=[EOS]))
    trees += first.run([("p", PROMPT)], Table(default=[EOS]))
    trees += same_seed.run([("p", PROMPT)], Table(default=[EOS]))
    ids = [tree.tree_id for tree in trees]
    assert all(ids) and len(set(ids)) == 3
    for tree in trees:
        assert {t.tree_id for t in tree.trajectories} == {tree.tree_id}


def test_tree_ids_round_trip_and_older_dicts_without_them_still_load():
    tree = sample(Table(default=[EOS]), width=2, branching=2, segment_len=1, max_depth=2)
    again = TreeResult.from_dict(msgpack.unpackb(msgpack.packb(tree.to_dict())))
    assert again.tree_id == tree.tree_id and again.trajectories[0].tree_id == tree.tree_id
    old = tree.to_dict()
    del old["tree_id"]
    for t in old["trajectories"]:
        del t["tree_id"]
    loaded = TreeResult.from_dict(old)
    assert loaded.tree_id == "" and loaded.trajectories[0].tree_id == ""


def test_several_eos_ids_cut_at_the_first_of_any():
    gen = Table([[[1, 9, 2], [EOS, 9]]], honour_max=True)
    sampler = TreeSampler(TreeSamplerConfig(width=2, branching=2, segment_len=3, max_depth=3),
                          eos_token_id=[EOS, 9], decode=decode)
    (tree,) = sampler.run([("p", PROMPT)], gen)
    assert [t.response_ids for t in tree.trajectories] == [[1, 9], [EOS]]
    assert [t.status for t in tree.trajectories] == ["eos_stopped", "eos_stopped"]
    assert sampler.eos_token_id == EOS


def test_a_result_longer_than_its_request_allows_is_rejected_without_changing_state():
    sampler = TreeSampler(TreeSamplerConfig(width=2, branching=2, segment_len=2, max_depth=2),
                          eos_token_id=EOS, decode=decode)
    sampler.add_prompt("p", PROMPT)
    requests = sampler.pending_requests()
    good = GenerationResult(requests[0].request_id, [1, 2], [-0.1, -0.1], eos=False, version=0)
    overlong = GenerationResult(requests[1].request_id, [1, 2, 3], [-0.1] * 3, eos=False, version=0)
    with pytest.raises(ValueError, match=f"{requests[1].request_id!r} has 3 tokens but its request allowed 2"):
        sampler.on_results([good, overlong])
    sampler.on_results([good, GenerationResult(requests[1].request_id, [EOS], [-0.1], eos=True, version=0)])
    assert len(sampler.pending_requests()) == 1


def test_independent_mode_stops_at_the_depth_cap_when_the_engine_returns_short_chunks():
    gen = Table(default=[1])
    tree = sample(gen, width=2, branching=2, segment_len=2, max_depth=3, response_cap=100, mode="independent")
    assert gen.round_sizes == [2, 2, 2]
    assert tree.stats.statuses == {"depth_capped": 2}
    assert all(len(t.segment_ids) == 3 for t in tree.trajectories)
