"""A tiny Qwen2-architecture model with a character-level tokenizer, warm-started on the synthetic arithmetic data.

`build_tiny_model()` returns a directory that `transformers.AutoModelForCausalLM.from_pretrained` and vLLM can both
load. The directory is cached: its name holds a hash of the build config and of `RECIPE_VERSION`, so a changed
recipe builds a new one, and it is written to a temporary directory and renamed into place, so a concurrent reader
never sees a partial build.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from zrl.rl.synthetic import ALPHABET, ArithmeticConfig, Example, generate_examples

log = logging.getLogger(__name__)

# Bump when the build recipe (code, not config) changes, so cached models are rebuilt.
RECIPE_VERSION = 2
SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}
BUILD_INFO = "zrl_build.json"


@dataclass(frozen=True)
class TinyModelConfig:
    """The tiny model's architecture, its warm-start recipe, and the data it is warm-started on."""

    hidden_size: int = 128
    """Model width; hidden_size / num_heads must be a head size vLLM's CPU kernel supports (32, 64, 80, ...)."""
    num_layers: int = 3
    """Transformer layers."""
    num_heads: int = 4
    """Attention heads (also the key/value heads)."""
    intermediate_size: int = 256
    """MLP width."""
    max_position_embeddings: int = 512
    """Longest sequence the model accepts."""
    tie_word_embeddings: bool = False
    """Share the input embedding and the output head (off: vLLM's CPU build does not refresh a tied head on reload)."""
    seed: int = 0
    """Seed of the weight init, the data and the warm start."""
    train_steps: int = 500
    """Supervised warm-start optimizer steps."""
    batch_size: int = 32
    """Examples per warm-start step."""
    learning_rate: float = 1e-3
    """Peak AdamW learning rate, reached after a linear warmup."""
    lr_schedule: str = "constant"
    """After the warmup: "constant", or "cosine" (decay to zero). A cosine decay ends in a sharp minimum where any
    further optimizer step, supervised or RL, first costs greedy accuracy; the constant schedule leaves the model
    where reinforcement learning improves it from the first steps, as it does a pretrained model."""
    train_examples: int = 20000
    """Size of the warm-start training set."""
    threads: int = 1
    """torch CPU threads during the build; fixed so the build is reproducible (1 copes best with a busy machine)."""
    log_every: int = 50
    """Log a progress line every this many steps."""
    data: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    """The synthetic problems used for the warm start."""

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"TinyModelConfig.lr_schedule={self.lr_schedule!r} must be 'constant' or 'cosine'")

    def cache_key(self) -> str:
        payload = json.dumps({"recipe": RECIPE_VERSION, "config": dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """`$ZRL_CACHE_DIR`, or `~/.cache/zrl`."""
    env = os.environ.get("ZRL_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "zrl"


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over the synthetic data's alphabet plus pad/bos/eos/unk."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS.values())}
    for char in sorted(set(ALPHABET)):
        vocab[char] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=SPECIAL_TOKENS["pad"],
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        padding_side="left",
    )


def load_tokenizer(path: Path | str) -> PreTrainedTokenizerFast:
    """The tokenizer saved in a model directory."""
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def _model_config(config: TinyModelConfig, tokenizer: PreTrainedTokenizerFast) -> Qwen2Config:
    if config.hidden_size % config.num_heads:
        raise ValueError(
            f"TinyModelConfig: hidden_size {config.hidden_size} is not divisible by num_heads {config.num_heads}"
        )
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def encode_example(tokenizer: PreTrainedTokenizerFast, example: Example) -> tuple[list[int], int]:
    """Token ids of prompt + solution + EOS, and the number of prompt tokens."""
    prompt = tokenizer(example.problem.prompt, add_special_tokens=False)["input_ids"]
    response = tokenizer(example.solution, add_special_tokens=False)["input_ids"]
    return prompt + response + [tokenizer.eos_token_id], len(prompt)


def _batch(
    encoded: list[tuple[list[int], int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention mask, and labels that score only response tokens."""
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    for row, (tokens, n_prompt) in enumerate(encoded):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
        labels[row, n_prompt : len(tokens)] = torch.tensor(tokens[n_prompt:])
    return ids, mask, labels


def _warm_start(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast, config: TinyModelConfig) -> None:
    examples = generate_examples("train", config.train_examples, seed=config.seed, config=config.data)
    encoded = [encode_example(tokenizer, example) for example in examples]
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    warmup = max(1, config.train_steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.lr_schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, config.train_steps - warmup)
        return 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    started = time.monotonic()
    for step in range(config.train_steps):
        picks = torch.randint(len(encoded), (config.batch_size,), generator=generator).tolist()
        ids, mask, labels = _batch([encoded[i] for i in picks], tokenizer.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if (step + 1) % config.log_every == 0 or step + 1 == config.train_steps:
            log.info(
                "tiny model warm start: step %d/%d loss %.4f (%.1fs)",
                step + 1, config.train_steps, loss.item(), time.monotonic() - started,
            )
    model.eval()


def _build_into(directory: Path, config: TinyModelConfig) -> None:
    tokenizer = make_tokenizer()
    torch.manual_seed(config.seed)
    model = Qwen2ForCausalLM(_model_config(config, tokenizer))
    _warm_start(model, tokenizer, config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))


def build_tiny_model(cache_dir: Path | str | None = None, config: TinyModelConfig | None = None) -> Path:
    """Build (or reuse from the cache) the tiny warm-started model; returns its directory."""
    config = config or TinyModelConfig()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"tiny-qwen2-{config.cache_key()}"
    if (target / BUILD_INFO).exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    # Processes that start together (the workers of a run) build once: the others wait here, then find it.
    lock_path = root / f".{target.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (target / BUILD_INFO).exists():
                _build_locked(root, target, config)
        finally:
            # Waiters that opened it still hold the lock's file; each re-checks for the build before building.
            lock_path.unlink(missing_ok=True)
    return target


def _build_locked(root: Path, target: Path, config: TinyModelConfig) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    threads = torch.get_num_threads()
    started = time.monotonic()
    try:
        torch.set_num_threads(config.threads)
        log.info("building tiny model %s in %s", target.name, root)
        _build_into(staging, config)
        info = {"recipe": RECIPE_VERSION, "config": dataclasses.asdict(config), "build_s": time.monotonic() - started}
        (staging / BUILD_INFO).write_text(json.dumps(info, indent=1))
        try:
            staging.rename(target)
        except OSError:
            # Another builder renamed its identical build into place first; keep theirs.
            if not (target / BUILD_INFO).exists():
                raise
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(staging, ignore_errors=True)
    log.info("built tiny model %s in %.1fs", target, time.monotonic() - started)


def build_info(path: Path | str) -> dict:
    """The build record of a tiny model directory (config and build time)."""
    return json.loads((Path(path) / BUILD_INFO).read_text())
