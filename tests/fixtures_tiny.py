"""Session-scoped tiny model, built once and cached under the repository's git-ignored `.cache/` directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zrl.rl.synthetic import generate_problems
from zrl.rl.tiny_model import build_tiny_model, load_tokenizer

CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "zrl"


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return build_tiny_model(cache_dir=CACHE_DIR)


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
