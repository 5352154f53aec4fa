import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_tiny import tiny_model_dir  # noqa: F401
from safetensors.torch import load_file

import zrl.rl.tiny_model as tiny_model
from zrl.rl.evaluation import score_model_dir
from zrl.rl.synthetic import (
    ALPHABET,
    ANSWER_ROOM,
    TASKS,
    ArithmeticConfig,
    generate_examples,
    generate_problems,
)
from zrl.rl.tiny_model import (
    SHIPPED_DIR,
    SHIPPED_DIRS,
    ShippedModelError,
    TinyModelConfig,
    build_info,
    build_tiny_model,
    compare_weights,
    default_cache_dir,
    load_tokenizer,
    make_tokenizer,
    rebuild,
    shipped_tiny_model,
    tiny_model_config,
    tiny_model_for,
    verify_checksums,
)

# The shipped model's greedy accuracy on the first 200 held-out (test) problems: the README's "What to expect"
# states it, and every run of the default experiment starts from it.
SHIPPED_HELDOUT_ACCURACY = 0.355
# The long task's shipped model, the same way (200 problems, 256 new tokens): low enough that trees have room to help.
SHIPPED_LONG_HELDOUT_ACCURACY = 0.35

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


def test_the_default_model_is_the_shipped_one_and_nothing_is_built(tmp_path, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("the default tiny model was built instead of taken from the package")

    monkeypatch.setattr(tiny_model, "_build_into", no_build)
    assert build_tiny_model(tmp_path) == SHIPPED_DIR == build_tiny_model(config=TinyModelConfig())
    assert list(tmp_path.iterdir()) == []
    # The shipped build record is the default recipe's: a changed recipe or default config must be shipped anew.
    recorded = TinyModelConfig.from_build_info(build_info(SHIPPED_DIR))
    assert recorded == TinyModelConfig() and build_info(SHIPPED_DIR)["recipe"] == tiny_model.RECIPE_VERSION
    # So is the long task's: its model comes from the package too, by its task's name.
    for task, directory in SHIPPED_DIRS.items():
        assert tiny_model_for(task) == directory
        assert TinyModelConfig.from_build_info(build_info(directory)) == tiny_model_config(task)
        assert build_info(directory)["config"]["data"] == vars(TASKS[task])
    assert list(tmp_path.iterdir()) == []


def test_a_corrupted_or_missing_shipped_file_is_named_with_what_to_do(tmp_path):
    copy = tmp_path / "tiny"
    shutil.copytree(SHIPPED_DIR, copy)
    verify_checksums(copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ShippedModelError, match=r"model\.safetensors is corrupted.*--rebuild"):
        shipped_tiny_model(copy)
    (copy / "config.json").unlink()
    with pytest.raises(ShippedModelError, match=r"config\.json is missing"):
        verify_checksums(copy)
    (copy / "SHA256SUMS").write_text("not a checksum line\n")
    with pytest.raises(ShippedModelError, match="SHA256SUMS, line 1"):
        verify_checksums(copy)


def test_a_rebuild_writes_a_verified_directory_and_reports_its_difference(tmp_path):
    first = rebuild(tmp_path / "a", QUICK)
    verify_checksums(first)
    same = compare_weights(first, rebuild(tmp_path / "b", QUICK))
    assert same.identical == same.tensors > 0 and same.max_abs_diff == 0.0
    other = compare_weights(first, rebuild(tmp_path / "c", TinyModelConfig(**{**QUICK.__dict__, "seed": 1})))
    assert other.identical < other.tensors and other.max_abs_diff > 0
    with pytest.raises(FileExistsError, match="not empty"):
        rebuild(first, QUICK)


def test_the_command_line_verifies_the_shipped_model():
    result = subprocess.run([sys.executable, "-m", "zrl.rl.tiny_model", "--verify"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"shipped tiny model (short task): {SHIPPED_DIR} (checksums match)" in result.stdout
    assert f"shipped tiny model (long task): {SHIPPED_DIRS['long']} (checksums match)" in result.stdout
    usage = subprocess.run([sys.executable, "-m", "zrl.rl.tiny_model", "--help"], capture_output=True, text=True,
                           timeout=120)
    assert "--rebuild DIR" in usage.stdout and "--verify" in usage.stdout and "--task" in usage.stdout


def test_the_shipped_model_starts_at_the_accuracy_the_readme_states():
    score = score_model_dir(SHIPPED_DIR, generate_problems("heldout", 200))
    assert score.accuracy == SHIPPED_HELDOUT_ACCURACY
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert f"{SHIPPED_HELDOUT_ACCURACY:.3f}" in readme
    # Every answer ends in a boxed number, and the model is far from its ceiling: there is room to learn.
    assert score.answered == 1.0 and score.accuracy < 0.5


def test_the_long_tasks_model_answers_at_length_and_has_room_to_learn():
    problems = generate_problems("heldout", 200, config=TASKS["long"])
    score = score_model_dir(SHIPPED_DIRS["long"], problems, ANSWER_ROOM["long"])
    assert score.accuracy == SHIPPED_LONG_HELDOUT_ACCURACY
    assert score.answered == 1.0 and 100 <= score.mean_response_tokens <= 160
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert f"{SHIPPED_LONG_HELDOUT_ACCURACY:.3f}" in readme
