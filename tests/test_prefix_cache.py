"""Prefix reuse in the transformers engine: the same tokens and logprobs as computing every prefix again, fewer
tokens computed, a token budget that holds, and nothing kept across a weight change."""

from __future__ import annotations

import pytest
import torch
from fixtures_tiny import heldout_prompt_ids, tiny_model_dir  # noqa: F401

from zrl.engines.base import GenerationRequest, SamplingParams
from zrl.engines.hf import HFEngine, HFEngineConfig, read_state_dict
from zrl.engines.prefix_cache import PrefixKVCache
from zrl.rl.tiny_model import load_tokenizer
from zrl.rl.tree.config import TreeSamplerConfig
from zrl.rl.tree.sampler import TreeSampler


def _sample_trees(model_dir, mode: str, dtype: str, cache_tokens: int, prompts, max_batch_size: int = 64):
    engine = HFEngine(model_dir, HFEngineConfig(device="cpu", dtype=dtype, prefix_cache_tokens=cache_tokens,
                                                max_batch_size=max_batch_size))
    tokenizer = load_tokenizer(model_dir)
    sampler = TreeSampler(TreeSamplerConfig(width=8, segment_len=8, max_depth=8, mode=mode, seed=11),
                          engine.eos_token_ids, tokenizer.decode)
    trees = sampler.run([(f"p{i}", ids) for i, ids in enumerate(prompts)], engine.generate)
    return [t for tree in trees for t in tree.trajectories], engine.stats()


def _assert_same(first, second, tolerance: float) -> None:
    assert [t.response_ids for t in first] == [t.response_ids for t in second]
    worst = max(abs(a - b) for x, y in zip(first, second, strict=True)
                for a, b in zip(x.logprobs, y.logprobs, strict=True))
    assert worst <= tolerance, f"logprobs differ by up to {worst}"


@pytest.mark.parametrize("mode", ["tree", "independent"])
def test_reuse_gives_the_same_tokens_and_logprobs_as_computing_every_prefix(tiny_model_dir, mode):  # noqa: F811
    prompts = heldout_prompt_ids(tiny_model_dir, 6, seed=2)
    # float64 leaves only the differences of the method; float32 adds those of summing in another order.
    for dtype, tolerance in (("float64", 1e-5), ("float32", 1e-4)):
        without, stats_off = _sample_trees(tiny_model_dir, mode, dtype, 0, prompts)
        with_reuse, stats_on = _sample_trees(tiny_model_dir, mode, dtype, 65536, prompts)
        _assert_same(without, with_reuse, tolerance)
        assert stats_off == {}
        assert stats_on["hits"] > 0 and stats_on["reused_tokens"] > stats_on["computed_tokens"]
    # A budget far below what one call needs keeps nothing for long, and changes nothing either.
    tiny_budget, stats_small = _sample_trees(tiny_model_dir, mode, "float64", 20, prompts, max_batch_size=4)
    float64_without, _ = _sample_trees(tiny_model_dir, mode, "float64", 0, prompts, max_batch_size=4)
    _assert_same(float64_without, tiny_budget, 1e-5)
    assert stats_small["cached_tokens"] <= 20


def test_the_samples_of_one_prompt_share_its_prefill(tiny_model_dir):  # noqa: F811
    engine = HFEngine(tiny_model_dir, HFEngineConfig(device="cpu"))
    prompt = heldout_prompt_ids(tiny_model_dir, 1, seed=4)[0]
    requests = [GenerationRequest(prompt, 4, SamplingParams(seed=i), f"r{i}") for i in range(8)]
    engine.generate(requests)
    stats = engine.stats()
    assert (stats["misses"], stats["hits"]) == (1, 7)
    assert stats["computed_tokens"] == len(prompt) - 1
    assert stats["reused_tokens"] == 7 * (len(prompt) - 1)
    # A request that continues one of them (prefix + its 4 tokens) computes nothing new: its parent left its
    # keys and values behind.
    first = engine.generate(requests[:1])[0]
    before = engine.stats()
    engine.generate([GenerationRequest(prompt + first.token_ids, 4, SamplingParams(seed=0), "child")])
    after = engine.stats()
    assert after["computed_tokens"] == before["computed_tokens"]
    assert after["hits"] == before["hits"] + 1
    assert after["reused_tokens"] == before["reused_tokens"] + len(prompt) + len(first.token_ids) - 1


def test_loading_weights_drops_the_cache_and_new_weights_decide(tiny_model_dir, tmp_path):  # noqa: F811
    prompts = heldout_prompt_ids(tiny_model_dir, 4, seed=9)
    greedy = SamplingParams(temperature=0.0)
    requests = [GenerationRequest(p, 12, greedy, str(i)) for i, p in enumerate(prompts)]
    engine = HFEngine(tiny_model_dir, HFEngineConfig(device="cpu"))
    engine.generate(requests)
    assert engine.stats()["cached_prefixes"] > 0
    state = read_state_dict(tiny_model_dir)
    generator = torch.Generator().manual_seed(0)
    perturbed = {name: tensor + 0.05 * torch.randn(tensor.shape, generator=generator) for name, tensor in state.items()}
    engine.load_weights(perturbed, version=1)
    assert engine.stats()["cached_prefixes"] == 0 and engine.stats()["clears"] == 1
    fresh = HFEngine(tiny_model_dir, HFEngineConfig(device="cpu", prefix_cache_tokens=0))
    fresh.load_weights(perturbed, version=1)
    assert [r.token_ids for r in engine.generate(requests)] == [r.token_ids for r in fresh.generate(requests)]


def test_the_lru_keeps_the_budget_and_evicts_the_least_recently_used():
    def kv(n: int):
        return [(torch.zeros(1, n, 2), torch.zeros(1, n, 2))]

    cache = PrefixKVCache(capacity_tokens=10)
    cache.put((1, 2, 3), kv(3))
    cache.put((1, 2, 3, 4), kv(4))
    assert cache.longest_prefix([1, 2, 3, 4, 5])[0] == 4
    assert cache.longest_prefix([1, 2, 3, 9])[0] == 3
    assert cache.longest_prefix([7, 8]) == (0, None)
    cache.get((1, 2, 3))  # now the most recently used
    cache.put((5, 6, 7, 8), kv(4))  # 11 tokens: the least recently used, (1, 2, 3, 4), goes
    assert cache.tokens == 7 and len(cache) == 2
    assert cache.get((1, 2, 3, 4)) is None and cache.get((1, 2, 3)) is not None
    assert cache.stats.evicted_entries == 1
    cache.put(tuple(range(11)), kv(11))  # larger than the whole budget: not kept, nothing evicted for it
    assert cache.tokens == 7
    cache.clear()
    assert (cache.tokens, len(cache), cache.longest_prefix([1, 2, 3])) == (0, 0, (0, None))
    with pytest.raises(ValueError, match="capacity"):
        PrefixKVCache(0)


def test_a_negative_budget_is_refused_by_name(tiny_model_dir):  # noqa: F811
    with pytest.raises(ValueError, match="prefix_cache_tokens"):
        HFEngine(tiny_model_dir, HFEngineConfig(prefix_cache_tokens=-1))
