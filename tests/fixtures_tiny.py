"""The session's tiny model: the one shipped with zrl (the same bits on every machine), checked against its
checksums. Tests that need a property of a model's weights get it from these fixed bits or from a model they build."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zrl.rl.synthetic import generate_problems
from zrl.rl.tiny_model import load_tokenizer, shipped_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return shipped_tiny_model()


def heldout_prompt_ids(model_dir: Path, count: int, seed: int) -> list[list[int]]:
    """Token ids of `count` held-out synthetic prompts."""
    tokenizer = load_tokenizer(model_dir)
    return [tokenizer(p.prompt, add_special_tokens=False)["input_ids"] for p in generate_problems("heldout", count, seed)]


def full_forward_logprobs(model, prefix: list[int], tokens: list[int]) -> list[float]:
    """Logprob of each of `tokens` after `prefix`, from one full forward pass of a transformers model."""
    with torch.no_grad():
        device = next(model.parameters()).device
        logits = model(torch.tensor([prefix + tokens], device=device)).logits[0].float().cpu()
    table = torch.log_softmax(logits, dim=-1)
    return [table[len(prefix) - 1 + i, token].item() for i, token in enumerate(tokens)]


def save_random_model(path: Path) -> Path:
    """A randomly initialised two-layer Qwen2 over the tiny model's character tokenizer, saved at `path`: for tests
    whose checks do not depend on trained weights (it builds in a second)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from zrl.rl.tiny_model import make_tokenizer

    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def engine_trainer_mismatch(engine, model_dir: Path, prompts: int = 6, samples: int = 4) -> dict:
    """The trainer's step metrics on trajectories that `engine` sampled from the shipped weights (version 0), with
    rewards that give every trajectory an advantage: `logprob_mismatch_on_policy` is the mean absolute difference
    between the engine's logprobs and the trainer's, token for token."""
    from transformers import AutoModelForCausalLM

    from zrl.engines.base import GenerationRequest, SamplingParams
    from zrl.rl.advantage import AdvantageConfig
    from zrl.rl.train_step import OptimizerConfig, StepConfig, make_optimizer, train_step
    from zrl.rl.tree.trajectory import Trajectory

    requests = [GenerationRequest(ids, 40, SamplingParams(temperature=1.0, seed=100 * p + s), f"{p}-{s}")
                for p, ids in enumerate(heldout_prompt_ids(model_dir, prompts, seed=5)) for s in range(samples)]
    trajectories = []
    for request, result in zip(requests, engine.generate(requests), strict=True):
        problem, sample = request.request_id.split("-")
        trajectories.append(Trajectory(
            uid=f"p{problem}", prompt_ids=request.prefix_ids, response_ids=result.token_ids, logprobs=result.logprobs,
            segment_ids=[int(problem) * samples + int(sample)], segment_tokens=[len(result.token_ids)], versions=[0],
            status="finished", reward=1.0 if int(sample) % 2 else -1.0, tree_id=f"p{problem}"))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    config = StepConfig(OptimizerConfig(lr=1e-5, warmup_steps=0), AdvantageConfig())
    optimizer, scheduler = make_optimizer(model, config.optimizer)
    pad_id = load_tokenizer(model_dir).pad_token_id
    metrics = train_step(model, optimizer, scheduler, trajectories, config, pad_id, on_policy_version=0)
    assert metrics["on_policy_tokens"] == sum(len(t.response_ids) for t in trajectories) > 0, metrics
    return metrics
