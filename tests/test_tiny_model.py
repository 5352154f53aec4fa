import hashlib
from pathlib import Path

import pytest
from fixtures_tiny import tiny_model_dir  # noqa: F401
from safetensors.torch import load_file

from zrl.rl.synthetic import ALPHABET, ArithmeticConfig, generate_examples
from zrl.rl.tiny_model import (
    TinyModelConfig,
    build_info,
    build_tiny_model,
    default_cache_dir,
    load_tokenizer,
    make_tokenizer,
)

# A quick recipe: the tests here check the build machinery, not the model's skill.
QUICK = TinyModelConfig(num_layers=2, train_steps=6, batch_size=4, train_examples=64, log_every=3)


def _weights_hash(path: Path) -> str:
    state = load_file(str(path / "model.safetensors"))
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].numpy().tobytes())
    return digest.hexdigest()


def test_build_is_deterministic_and_seeded(tmp_path):
    first = build_tiny_model(tmp_path / "a", QUICK)
    second = build_tiny_model(tmp_path / "b", QUICK)
    other_seed = build_tiny_model(tmp_path / "a", TinyModelConfig(**{**QUICK.__dict__, "seed": 1}))
    assert _weights_hash(first) == _weights_hash(second)
    assert _weights_hash(first) != _weights_hash(other_seed)
    assert first != other_seed


def test_second_build_comes_from_the_cache(tmp_path, monkeypatch):
    path = build_tiny_model(tmp_path, QUICK)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    import zrl.rl.tiny_model as tiny_model

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached model was rebuilt")

    monkeypatch.setattr(tiny_model, "_build_into", no_rebuild)
    assert build_tiny_model(tmp_path, QUICK) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    # No staging directories are left behind.
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    # A changed recipe is a different cache entry, so it would be built anew.
    with pytest.raises(AssertionError, match="rebuilt"):
        build_tiny_model(tmp_path, TinyModelConfig(**{**QUICK.__dict__, "train_steps": 7}))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_cache_dir_defaults_to_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ZRL_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    assert build_tiny_model(config=QUICK).parent == tmp_path
    monkeypatch.delenv("ZRL_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "zrl"


def test_tokenizer_round_trips_the_data():
    tokenizer = make_tokenizer()
    for example in generate_examples("train", 200, config=ArithmeticConfig(max_ops=4, max_operand=20)):
        text = example.problem.prompt + example.solution
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text)
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text
    assert len(set(tokenizer(ALPHABET, add_special_tokens=False)["input_ids"])) == len(set(ALPHABET))
    assert len({tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id}) == 4


def test_saved_model_loads_with_transformers(tiny_model_dir):  # noqa: F811
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    tokenizer = load_tokenizer(tiny_model_dir)
    config = model.config
    assert config.model_type == "qwen2"
    assert config.hidden_size // config.num_attention_heads == 32
    assert config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert build_info(tiny_model_dir)["config"]["seed"] == 0
