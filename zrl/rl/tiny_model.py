"""A tiny Qwen2-architecture model with a character-level tokenizer, warm-started on the synthetic arithmetic data.

`build_tiny_model()` returns a directory that `transformers.AutoModelForCausalLM.from_pretrained` and vLLM can both
load. The default model is shipped with zrl (`zrl/rl/tiny_model_files/`, about 2 MB, with the checksums of its
files): a warm start on the CPU gives slightly different weights on different processors, and every figure in the
documentation is measured from the shipped bits. Any other config is built by the recipe and cached: the cache
directory's name holds a hash of the build config and of `RECIPE_VERSION`, so a changed recipe builds a new one,
and it is written to a temporary directory and renamed into place, so a concurrent reader never sees a partial
build.

    python -m zrl.rl.tiny_model --verify          # check the shipped files against their checksums
    python -m zrl.rl.tiny_model --rebuild DIR     # rebuild by the recipe and compare with the shipped model
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

from zrl.rl.synthetic import ALPHABET, TASKS, ArithmeticConfig, Example, generate_examples, task_config

log = logging.getLogger(__name__)

# Bump when the build recipe (code, not config) changes, so cached models are rebuilt.
RECIPE_VERSION = 3
LONG_TASK_WARM_START_STEPS = 1000
SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}
BUILD_INFO = "zrl_build.json"
CHECKSUMS = "SHA256SUMS"
SHIPPED_DIR = Path(__file__).resolve().parent / "tiny_model_files"
"""The shipped build of the default `TinyModelConfig()` (the short task)."""
SHIPPED_DIRS = {"short": SHIPPED_DIR, "long": SHIPPED_DIR.with_name("tiny_model_files_long")}
"""The shipped build of each task's tiny model (`tiny_model_config`)."""


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

    @classmethod
    def from_build_info(cls, info: dict) -> TinyModelConfig:
        """The config recorded in a build record (`zrl_build.json`)."""
        recorded = dict(info["config"])
        return cls(**{**recorded, "data": ArithmeticConfig(**recorded["data"])})

    def cache_key(self) -> str:
        payload = json.dumps({"recipe": RECIPE_VERSION, "config": dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def tiny_model_config(task: str) -> TinyModelConfig:
    """The recipe of the tiny model for a synthetic task of `zrl.rl.synthetic.TASKS`: the long task's answers are
    three times as long, so the warm start takes more steps of them to reach a comparable start."""
    data = task_config(task)
    if task == "long":
        return TinyModelConfig(data=data, train_steps=LONG_TASK_WARM_START_STEPS, log_every=100)
    return TinyModelConfig()


def tiny_model_for(task: str) -> Path:
    """The tiny model warm-started on a synthetic task: the shipped build, checked against its checksums."""
    return build_tiny_model(config=tiny_model_config(task))


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


class ShippedModelError(RuntimeError):
    """The shipped tiny model is missing or its files do not match their checksums."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(directory: Path) -> None:
    """Record the SHA-256 of every file of a model directory in its `SHA256SUMS`."""
    names = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != CHECKSUMS)
    (directory / CHECKSUMS).write_text("".join(f"{_sha256(directory / name)}  {name}\n" for name in names))


def verify_checksums(directory: Path) -> None:
    """Raise `ShippedModelError`, naming the file, unless every file listed in `SHA256SUMS` has its recorded hash."""
    restore = ("reinstall zrl (or `git checkout -- zrl/rl/tiny_model_files`), or rebuild a model by the recipe with "
               "`python -m zrl.rl.tiny_model --rebuild DIR` and pass model.path=DIR")
    listing = directory / CHECKSUMS
    if not listing.is_file():
        raise ShippedModelError(f"the tiny model in {directory} has no {CHECKSUMS}: {restore}")
    for line_number, line in enumerate(listing.read_text().splitlines(), 1):
        recorded, _, name = line.partition("  ")
        if not name or len(recorded) != 64:
            raise ShippedModelError(f"{listing}, line {line_number}: expected '<sha256>  <file>', got {line!r}")
        path = directory / name
        if not path.is_file():
            raise ShippedModelError(f"the tiny model's file {path} is missing: {restore}")
        actual = _sha256(path)
        if actual != recorded:
            raise ShippedModelError(f"the tiny model's file {path} is corrupted: its SHA-256 is {actual}, "
                                    f"{CHECKSUMS} records {recorded}: {restore}")


_verified: set[Path] = set()


def shipped_tiny_model(directory: Path = SHIPPED_DIR) -> Path:
    """The shipped tiny model's directory, its files checked against their checksums (once per process)."""
    if directory not in _verified:
        verify_checksums(directory)
        _verified.add(directory)
    return directory


def _shipped_config_key(directory: Path) -> str | None:
    try:
        info = build_info(directory)
        return TinyModelConfig.from_build_info(info).cache_key() if info.get("recipe") == RECIPE_VERSION else None
    except (OSError, ValueError, TypeError, KeyError):
        return None


def build_tiny_model(cache_dir: Path | str | None = None, config: TinyModelConfig | None = None) -> Path:
    """The tiny warm-started model's directory: a shipped one when `config` is a shipped model's (checked against
    its checksums), otherwise built by the recipe (or reused from the cache)."""
    config = config or TinyModelConfig()
    for directory in SHIPPED_DIRS.values():
        if config.cache_key() == _shipped_config_key(directory):
            return shipped_tiny_model(directory)
    return build_tiny_model_from_recipe(cache_dir, config)


def build_tiny_model_from_recipe(cache_dir: Path | str | None = None, config: TinyModelConfig | None = None) -> Path:
    """Build (or reuse from the cache) the tiny warm-started model by the recipe; returns its directory."""
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
    try:
        log.info("building tiny model %s in %s", target.name, root)
        build_s = _build_with_record(staging, config)
        try:
            staging.rename(target)
        except OSError:
            # Another builder renamed its identical build into place first; keep theirs.
            if not (target / BUILD_INFO).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("built tiny model %s in %.1fs", target, build_s)


def _build_with_record(directory: Path, config: TinyModelConfig) -> float:
    """Build into `directory` on `config.threads` threads and write the build record; returns the build seconds."""
    threads = torch.get_num_threads()
    started = time.monotonic()
    try:
        torch.set_num_threads(config.threads)
        _build_into(directory, config)
    finally:
        torch.set_num_threads(threads)
    build_s = time.monotonic() - started
    info = {"recipe": RECIPE_VERSION, "config": dataclasses.asdict(config), "build_s": round(build_s, 1),
            "torch": torch.__version__}
    (directory / BUILD_INFO).write_text(json.dumps(info, indent=1))
    return build_s


def rebuild(directory: Path, config: TinyModelConfig | None = None) -> Path:
    """Build the model by the recipe into `directory` (which must not exist), with its build record and checksums."""
    config = config or TinyModelConfig()
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} exists and is not empty; name a new directory")
    directory.mkdir(parents=True, exist_ok=True)
    _build_with_record(directory, config)
    write_checksums(directory)
    return directory


def build_info(path: Path | str) -> dict:
    """The build record of a tiny model directory (config and build time)."""
    return json.loads((Path(path) / BUILD_INFO).read_text())


@dataclass(frozen=True)
class WeightsDifference:
    """How the weights of two model directories differ."""

    tensors: int
    """Tensors in the first model."""
    identical: int
    """Tensors bit-identical in both."""
    max_abs_diff: float
    """Largest absolute difference of any weight (inf when the two models' tensors do not match up)."""


def compare_weights(first: Path, second: Path) -> WeightsDifference:
    from safetensors.torch import load_file

    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    if a.keys() != b.keys() or any(a[name].shape != b[name].shape for name in a):
        return WeightsDifference(len(a), 0, float("inf"))
    identical = sum(torch.equal(a[name], b[name]) for name in a)
    worst = max((a[name].float() - b[name].float()).abs().max().item() for name in a)
    return WeightsDifference(len(a), identical, worst)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m zrl.rl.tiny_model",
        description="The tiny built-in models: check the shipped copies, or rebuild one by the recipe and compare.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--verify", action="store_true", help="check every shipped model against its checksums")
    action.add_argument("--rebuild", metavar="DIR", type=Path,
                        help="build a task's model by the recipe into DIR (a new directory; about 1.5 min on one "
                             "core for the short task, 9 min for the long one) and print how it differs from the "
                             "shipped one")
    parser.add_argument("--task", choices=sorted(TASKS), default="short", help="which task's model to rebuild")
    parser.add_argument("--heldout", type=int, default=200,
                        help="held-out (test) problems on which --rebuild compares greedy accuracy (0: skip)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.verify:
        try:
            for task, directory in SHIPPED_DIRS.items():
                print(f"shipped tiny model ({task} task): {shipped_tiny_model(directory)} (checksums match)")
        except ShippedModelError as error:
            print(f"error: {error}")
            return 1
        return 0
    built = rebuild(args.rebuild, tiny_model_config(args.task))
    shipped = shipped_tiny_model(SHIPPED_DIRS[args.task])
    difference = compare_weights(shipped, built)
    print(f"rebuilt {built} in {build_info(built)['build_s']:.0f} s")
    if difference.identical == difference.tensors:
        print(f"weights: all {difference.tensors} tensors bit-identical to the shipped model")
    else:
        print(f"weights: {difference.identical} of {difference.tensors} tensors bit-identical to the shipped model; "
              f"largest difference {difference.max_abs_diff:.3g}")
    if args.heldout:
        from zrl.rl.evaluation import score_model_dir
        from zrl.rl.synthetic import ANSWER_ROOM, generate_problems

        problems = generate_problems("heldout", args.heldout, config=task_config(args.task))
        for label, path in (("shipped", shipped), ("rebuilt", built)):
            score = score_model_dir(path, problems, ANSWER_ROOM[args.task])
            print(f"{label}: greedy accuracy {score.accuracy:.3f} on {len(problems)} held-out problems "
                  f"({score.answered:.3f} answered)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
