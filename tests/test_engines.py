import json
import shutil

import pytest
import torch
from fixtures_tiny import engine_trainer_mismatch, full_forward_logprobs, heldout_prompt_ids, tiny_model_dir  # noqa: F401
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

from zrl.engines.base import GenerationRequest, SamplingParams
from zrl.engines.factory import make_engine
from zrl.engines.hf import HFEngine, HFEngineConfig, read_state_dict
from zrl.rl.synthetic import generate_examples
from zrl.rl.tiny_model import load_tokenizer

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):  # noqa: F811
    engine = make_engine("hf", tiny_model_dir, max_batch_size=8)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def prompts(tiny_model_dir):  # noqa: F811
    return heldout_prompt_ids(tiny_model_dir, 6, seed=5)


def _greedy_by_full_forward(model, prefix: list[int], steps: int, eos: int) -> list[int]:
    tokens: list[int] = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(torch.tensor([prefix + tokens], device=device)).logits[0, -1].argmax())
            tokens.append(token)
            if token == eos:
                break
    return tokens


def test_returns_only_new_tokens_matching_uncached_decoding(engine, prompts):
    results = engine.generate([GenerationRequest(p, 10, GREEDY, f"r{i}") for i, p in enumerate(prompts[:3])])
    assert [r.request_id for r in results] == ["r0", "r1", "r2"]
    for prefix, result in zip(prompts, results, strict=False):
        assert result.token_ids == _greedy_by_full_forward(engine.model, prefix, 10, engine.eos_token_id)
        assert len(result.token_ids) == len(result.logprobs) <= 10


def test_sampled_logprobs_match_a_full_forward_pass(engine, prompts):
    requests = [GenerationRequest(p, 24, SamplingParams(temperature=1.0, seed=i)) for i, p in enumerate(prompts)]
    for prefix, result in zip(prompts, engine.generate(requests), strict=True):
        expected = full_forward_logprobs(engine.model, prefix, result.token_ids)
        assert max(abs(a - b) for a, b in zip(expected, result.logprobs, strict=True)) < 1e-4


def test_the_trainer_recomputes_the_logprobs_the_engine_sampled_with(engine, tiny_model_dir):  # noqa: F811
    metrics = engine_trainer_mismatch(engine, tiny_model_dir)
    assert metrics["logprob_mismatch_on_policy"] < 1e-3, metrics


def test_eos_stops_a_sequence_and_is_its_last_token(engine, tiny_model_dir):  # noqa: F811
    tokenizer = load_tokenizer(tiny_model_dir)
    # A complete worked solution: the warm-started model's next token is EOS (index 0 of the continuation).
    finished = [
        tokenizer(e.problem.prompt + e.solution, add_special_tokens=False)["input_ids"]
        for e in generate_examples("heldout", 4, seed=2)
    ]
    results = engine.generate([GenerationRequest(ids, 6, GREEDY) for ids in finished])
    assert any(r.eos for r in results)
    for result in results:
        assert (engine.eos_token_id in result.token_ids) == result.eos
        if result.eos:
            assert result.token_ids.index(engine.eos_token_id) == len(result.token_ids) - 1
        else:
            assert len(result.token_ids) == 6


def test_batch_of_different_lengths_equals_one_by_one(engine, prompts):
    prefixes = [prompts[0][:4], prompts[1], prompts[2][:9], prompts[3] + [5, 6]]
    batch = engine.generate([GenerationRequest(p, 16, GREEDY) for p in prefixes])
    alone = [engine.generate([GenerationRequest(p, 16, GREEDY)])[0] for p in prefixes]
    assert [r.token_ids for r in batch] == [r.token_ids for r in alone]
    for a, b in zip(batch, alone, strict=True):
        assert max((abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)), default=0.0) < 1e-4


def test_finished_rows_leave_the_batch_and_the_others_decode_as_alone(engine, prompts):
    budgets = [2, 16, 0, 9]
    requests = [GenerationRequest(p, n, SamplingParams(temperature=1.0, seed=3 + i))
                for i, (p, n) in enumerate(zip(prompts, budgets, strict=False))]
    rows_per_forward: list[int] = []
    hook = engine.model.register_forward_pre_hook(
        lambda module, args, kwargs: rows_per_forward.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        batch = engine.generate(requests)
    finally:
        hook.remove()
    alone = [engine.generate([request])[0] for request in requests]
    assert [r.token_ids for r in batch] == [r.token_ids for r in alone]
    assert all(len(r.token_ids) <= n for n, r in zip(budgets, batch, strict=True))
    # Only the rows still decoding are computed: the empty request leaves after the prefill, the 2-token one after
    # its second token, and the last steps run the longest request alone.
    assert rows_per_forward[0] == 4 and rows_per_forward[1] <= 3 and rows_per_forward[-1] == 1
    assert sum(rows_per_forward) < 4 * len(rows_per_forward)


def test_seeded_sampling_is_reproducible_and_zero_tokens_is_empty(engine, prompts):
    request = GenerationRequest(prompts[0], 20, SamplingParams(temperature=1.0, seed=11))
    assert engine.generate([request])[0].token_ids == engine.generate([request])[0].token_ids
    empty = engine.generate([GenerationRequest(prompts[0], 0)])[0]
    assert empty.token_ids == [] and empty.logprobs == [] and not empty.eos


def test_load_weights_changes_outputs_and_version(tiny_model_dir, prompts):  # noqa: F811
    engine = HFEngine(tiny_model_dir, version=3)
    requests = [GenerationRequest(p, 12, GREEDY) for p in prompts]
    before = engine.generate(requests)
    assert {r.version for r in before} == {3}
    original = read_state_dict(tiny_model_dir)
    generator = torch.Generator().manual_seed(0)
    perturbed = {k: v + 0.5 * torch.randn(v.shape, generator=generator) for k, v in original.items()}
    engine.load_weights(perturbed, version=4)
    after = engine.generate(requests)
    assert engine.version == 4 and {r.version for r in after} == {4}
    assert [r.token_ids for r in after] != [r.token_ids for r in before]
    engine.load_weights(tiny_model_dir, version=5)
    again = engine.generate(requests)
    assert [r.token_ids for r in again] == [r.token_ids for r in before]
    assert {r.version for r in again} == {5}


def test_bad_input_is_named_and_the_engine_keeps_working(engine, prompts):
    bad_shape = dict(read_state_dict(engine.model_path))
    name = next(iter(bad_shape))
    bad_shape[name] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=f"{name} has shape"):
        engine.load_weights(bad_shape, version=9)
    with pytest.raises(ValueError, match="unknown tensors"):
        engine.load_weights({"nonsense.weight": torch.zeros(1)}, version=9)
    assert engine.version == 0
    with pytest.raises(ValueError, match=r"request 1 \(id 'b'\): prefix_ids is empty"):
        engine.generate([GenerationRequest(prompts[0], 4, request_id="a"), GenerationRequest([], 4, request_id="b")])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate([GenerationRequest([10**6], 4)])
    assert len(engine.generate([GenerationRequest(prompts[0], 4)])[0].token_ids) >= 1


def test_factory_names_unknown_kinds_and_options(tiny_model_dir):  # noqa: F811
    with pytest.raises(ValueError, match=r"unknown engine kind 'sglang'; known kinds: hf, vllm"):
        make_engine("sglang", tiny_model_dir)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['batch'\] for engine 'hf'"):
        make_engine("hf", tiny_model_dir, batch=3)


def _random_model_dir(path, tie_word_embeddings=True, eos_token_id=(1,)):
    """A randomly initialised two-layer Qwen2 over a 50-token vocabulary, saved to `path`."""
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=50, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=tie_word_embeddings, eos_token_id=eos_token_id[0])
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = list(eos_token_id)
    model.save_pretrained(path)
    return path


def _save_weights_like(model_dir, state, path):
    """A model directory holding `state` with the config files of `model_dir`."""
    path.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))
    for name in ("config.json", "generation_config.json"):
        shutil.copy(model_dir / name, path / name)
    return path


def _greedy(engine, prefixes, steps):
    return [r.token_ids for r in engine.generate([GenerationRequest(p, steps, GREEDY) for p in prefixes])]


RANDOM_PROMPTS = [[3, 4, 5], [7, 8], [10, 11, 12, 13]]


def test_reload_keeps_tied_embeddings_and_generates_with_the_new_weights(tmp_path):
    model_dir = _random_model_dir(tmp_path / "tied")
    engine = HFEngine(model_dir, HFEngineConfig(device="cpu"))
    before = _greedy(engine, RANDOM_PROMPTS, 8)
    original = read_state_dict(model_dir)
    assert "lm_head.weight" not in original
    generator = torch.Generator().manual_seed(0)
    perturbed = {k: v + 0.5 * torch.randn(v.shape, generator=generator) for k, v in original.items()}
    engine.load_weights(perturbed, version=1)
    head, embedding = engine.model.get_output_embeddings().weight, engine.model.get_input_embeddings().weight
    assert head.data_ptr() == embedding.data_ptr()
    assert torch.equal(head, perturbed["model.embed_tokens.weight"])
    reference = HFEngine(_save_weights_like(model_dir, perturbed, tmp_path / "perturbed"), HFEngineConfig(device="cpu"))
    after = _greedy(engine, RANDOM_PROMPTS, 8)
    assert after == _greedy(reference, RANDOM_PROMPTS, 8) and after != before
    # a trainer's full state dict names the tied head too
    engine.load_weights(dict(reference.model.state_dict()), version=2)
    assert _greedy(engine, RANDOM_PROMPTS, 8) == after
    engine.load_weights(model_dir, version=3)
    assert _greedy(engine, RANDOM_PROMPTS, 8) == before and engine.version == 3


def _cut_at_any(tokens, stop_ids):
    """`tokens` through the first of `stop_ids`, and whether one was found."""
    for i, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[:i + 1], True
    return tokens, False


def _set_generation_eos(model_dir, eos_ids):
    config = json.loads((model_dir / "generation_config.json").read_text())
    config["eos_token_id"] = list(eos_ids)
    (model_dir / "generation_config.json").write_text(json.dumps(config))


def test_generation_stops_on_any_of_several_eos_ids(tmp_path):
    # untied: a tied random model just repeats its last input token
    model_dir = _random_model_dir(tmp_path / "eos", tie_word_embeddings=False)
    model = HFEngine(model_dir, HFEngineConfig(device="cpu")).model
    free_runs = [_greedy_by_full_forward(model, p, 12, eos=-1) for p in RANDOM_PROMPTS]
    # the second id is a token the first prompt emits mid-way for the first time; the first is never emitted
    second = next(t for i, t in enumerate(free_runs[0]) if i >= 2 and t not in free_runs[0][:i])
    first = next(t for t in range(50) if all(t not in run for run in free_runs))
    _set_generation_eos(model_dir, [first, second])

    engine = HFEngine(model_dir, HFEngineConfig(device="cpu"))
    assert engine.eos_token_ids == (first, second) and engine.eos_token_id == first
    results = engine.generate([GenerationRequest(p, 12, GREEDY) for p in RANDOM_PROMPTS])
    assert [(r.token_ids, r.eos) for r in results] == [_cut_at_any(run, {first, second}) for run in free_runs]
    assert results[0].eos and results[0].token_ids[-1] == second and len(results[0].token_ids) >= 3


def test_prefill_computes_logits_for_the_last_position_only(tmp_path):
    engine = HFEngine(_random_model_dir(tmp_path / "model"), HFEngineConfig(device="cpu"))
    shapes = []

    def record(module, args, kwargs, output):
        shapes.append(tuple(output.logits.shape))

    handle = engine.model.register_forward_hook(record, with_kwargs=True)
    try:
        engine.generate([GenerationRequest(p, 3, GREEDY) for p in RANDOM_PROMPTS])
    finally:
        handle.remove()
    assert shapes and set(shapes) == {(len(RANDOM_PROMPTS), 1, 50)}


def test_batched_sampling_follows_temperature_and_top_p_row_by_row():
    from zrl.engines.hf import sample_rows

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]]))
    logits = torch.nan_to_num(logits, neginf=-1e9)
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    temperatures, top_ps = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1.0, 0.5, 1.0])
    counts = torch.zeros(3, 4)
    for _ in range(4000):
        picked = sample_rows(logits, temperatures, top_ps, generators)
        counts[torch.arange(3), picked] += 1
    frequencies = counts / 4000
    assert torch.allclose(frequencies[0], torch.tensor([0.5, 0.3, 0.2, 0.0]), atol=0.03)
    # top_p=0.5 keeps the two likeliest tokens (0.4 + 0.3), renormalised.
    assert torch.allclose(frequencies[1], torch.tensor([0.0, 0.0, 3 / 7, 4 / 7]), atol=0.03)
    assert frequencies[2].tolist() == [1.0, 0.0, 0.0, 0.0]  # temperature 0 is greedy
    # A row's draws depend only on its own generator, not on the rows beside it.
    alone = [int(sample_rows(logits[:1], temperatures[:1], top_ps[:1], [torch.Generator().manual_seed(9)]))
             for _ in range(1)]
    together = sample_rows(logits, temperatures, top_ps, [torch.Generator().manual_seed(9)] + generators[1:])
    assert int(together[0]) == alone[0]


def test_adopted_weights_are_shared_and_copied_weights_are_not(tiny_model_dir, prompts):  # noqa: F811
    engine = HFEngine(tiny_model_dir, HFEngineConfig(device="cpu"))  # weights read to the CPU fit it in place
    requests = [GenerationRequest(p, 12, GREEDY) for p in prompts]
    before = engine.generate(requests)
    state = read_state_dict(tiny_model_dir)
    copied = {name: tensor.clone() for name, tensor in state.items()}
    engine.load_weights(copied, version=1)
    for tensor in copied.values():
        tensor.add_(1.0)  # the caller still owns these: the engine must not see the change
    assert [r.token_ids for r in engine.generate(requests)] == [r.token_ids for r in before]

    handed_over = {name: tensor.clone() for name, tensor in state.items()}
    engine.load_weights(handed_over, version=2, adopt=True)
    parameters = dict(engine.model.named_parameters())
    shared = [name for name, tensor in handed_over.items()
              if name in parameters and parameters[name].data_ptr() == tensor.data_ptr()]
    assert len(shared) == len(parameters), "every fitting tensor is taken over without a copy"
    assert [r.token_ids for r in engine.generate(requests)] == [r.token_ids for r in before]
    assert {r.version for r in engine.generate(requests)} == {2}


def test_weights_that_do_not_fit_in_place_are_copied_when_adopting(tiny_model_dir, prompts):  # noqa: F811
    engine = HFEngine(tiny_model_dir, HFEngineConfig(device="cpu"))
    requests = [GenerationRequest(p, 12, GREEDY) for p in prompts]
    before = engine.generate(requests)
    as_double = {name: tensor.double() for name, tensor in read_state_dict(tiny_model_dir).items()}
    engine.load_weights(as_double, version=1, adopt=True)
    assert all(p.dtype == torch.float32 for p in engine.model.parameters())
    assert [r.token_ids for r in engine.generate(requests)] == [r.token_ids for r in before]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI has none)")
def test_an_engine_on_a_gpu_loads_cpu_weights_by_copying(tiny_model_dir, prompts):  # noqa: F811
    engine = HFEngine(tiny_model_dir, HFEngineConfig(device="cuda"))
    requests = [GenerationRequest(p, 12, GREEDY) for p in prompts]
    before = engine.generate(requests)
    engine.load_weights(read_state_dict(tiny_model_dir), version=1, adopt=True)
    assert all(p.device.type == "cuda" for p in engine.model.parameters())
    after = engine.generate(requests)
    assert [r.token_ids for r in after] == [r.token_ids for r in before] and {r.version for r in after} == {1}


def test_an_experiments_engine_options_reach_the_hf_engine(tiny_model_dir):  # noqa: F811
    from zrl.workers.treepo_config import EngineOptions

    options = EngineOptions(kind="hf", device="cpu", max_batch_size=3, seed=11)
    engine = make_engine(options.kind, tiny_model_dir, **options.engine_kwargs())
    try:
        assert engine.config == HFEngineConfig(device="cpu", dtype="float32", max_batch_size=3, seed=11)
    finally:
        engine.close()
