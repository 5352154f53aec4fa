"""Config types of the TreePO workers (policy, rollout, trainer, evaluator), in a module of their own so the
controller reads them without importing torch or the workers.

Fields that several workers must agree on (the model, the stream names, the parameter DB) appear in each worker's
config; an experiment file keeps them equal, and its `aliases` let one override set them all (`model.path=...`).
The staleness rule (`max_staleness`, `prompts_per_step`) must agree between the trainer and the rollout workers:
`staleness_disagreements` names every key on which they differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from zrl.config import WorkerGroupConfig
from zrl.rl.advantage import AdvantageConfig
from zrl.rl.datasets import DatasetConfig
from zrl.rl.loss import LossConfig
from zrl.rl.staleness import StalenessRule
from zrl.rl.train_step import OptimizerConfig
from zrl.rl.tree.config import TreeSamplerConfig
from zrl.rl.verifier import VerifierConfig

EngineKind = Literal["hf", "vllm"]
SyntheticTask = Literal["short", "long"]
"""The names of `zrl.rl.synthetic.TASKS`."""
STALENESS_KEYS = ("max_staleness", "prompts_per_step")
"""Fields of both `TrainerConfig` and `RolloutConfig` that make up the staleness rule."""


@dataclass(frozen=True)
class ModelSource:
    """Which weights a worker starts from, and where trained versions are published."""

    path: str = ""
    """A model directory (config, safetensors, tokenizer); empty: the tiny built-in model, built and cached."""
    paramdb_root: str = ""
    """Root of the parameter DB; empty: the run root, so versions land in the run directory."""
    name: str = "policy"
    """Model name in the parameter DB."""
    builtin: SyntheticTask = "short"
    """With an empty path: which tiny built-in model, the one warm-started on the 'short' or on the 'long' synthetic
    task."""


@dataclass(frozen=True)
class ProblemSource:
    """Where problems come from: the synthetic arithmetic generator or a jsonl/parquet file."""

    kind: Literal["synthetic", "file"] = "synthetic"
    """'synthetic' (generated arithmetic) or 'file' (a jsonl/parquet dataset; see `file.*`)."""
    count: int = 20000
    """Synthetic problems to generate (kind=synthetic)."""
    split: Literal["train", "validation", "heldout"] = "train"
    """Synthetic split (kind=synthetic): train, validation (for choosing settings) or heldout (the test set); no two
    splits share a problem."""
    seed: int = 0
    """Seed of the synthetic generator."""
    task: SyntheticTask = "short"
    """Difficulty of synthetic problems: 'short' (2-3 operations, answers of about 45 tokens) or 'long' (5-7
    operations, about 130 tokens); `zrl.rl.synthetic.TASKS`."""
    file: DatasetConfig = field(default_factory=DatasetConfig)
    """The dataset file and its field layout (kind=file)."""


@dataclass(frozen=True)
class EngineOptions:
    """Settings of the generation engine of a policy or evaluator worker."""

    kind: EngineKind = "hf"
    """'hf' (transformers, anywhere) or 'vllm' (vLLM; its CPU build on a machine without a GPU)."""
    dtype: str = "float32"
    """Weights dtype of the engine: float32, bfloat16, float16 or auto."""
    device: str = "auto"
    """torch device of the hf engine; auto: cuda when available, else cpu."""
    max_batch_size: int = 64
    """hf: most requests decoded together; an engine call with more is decoded in parts of this size."""
    prefix_cache_tokens: int = 65536
    """hf: most tokens of prefixes whose keys and values are kept for the requests that continue them (a tree's
    children, the samples of one prompt); 0 turns reuse off. vLLM caches prefixes by its own blocks."""
    max_model_len: int = 512
    """vLLM: longest prompt + response in tokens."""
    block_size: int | None = None
    """vLLM: KV cache block size (None: vLLM's default)."""
    gpu_memory_utilization: float = 0.9
    """vLLM on a GPU: the fraction of its memory vLLM may take."""
    seed: int = 0
    """Seed of the engine's own sampler."""

    def engine_kwargs(self) -> dict[str, object]:
        """Options for `zrl.engines.factory.make_engine` of this kind."""
        if self.kind == "hf":
            return {"device": self.device, "dtype": self.dtype, "max_batch_size": self.max_batch_size, "seed": self.seed,
                    "prefix_cache_tokens": self.prefix_cache_tokens}
        return {"dtype": self.dtype, "max_model_len": self.max_model_len, "block_size": self.block_size,
                "gpu_memory_utilization": self.gpu_memory_utilization, "seed": self.seed}


@dataclass(frozen=True)
class PolicyConfig:
    model: ModelSource = field(default_factory=ModelSource)
    """The starting weights and the parameter DB to follow."""
    engine: EngineOptions = field(default_factory=EngineOptions)
    """The generation engine."""
    inference_stream: str = "policy"
    """Inference stream this worker serves."""
    max_batch: int = 256
    """Most requests (from all rollout workers) answered by one engine call."""
    poll_timeout_s: float = 0.05
    """Longest wait for requests in one poll."""
    version_check_s: float = 0.005
    """Seconds between checks for a newer version in the parameter DB."""
    threads: int = 1
    """torch CPU threads of this process (0: torch's default)."""


@dataclass(frozen=True)
class RolloutConfig:
    model: ModelSource = field(default_factory=ModelSource)
    """The model whose tokenizer encodes prompts and decodes answers; its parameter DB tells the trainer's version."""
    problems: ProblemSource = field(default_factory=ProblemSource)
    """The training problems; each rollout worker takes its shard (index mod count)."""
    tree: TreeSamplerConfig = field(default_factory=TreeSamplerConfig)
    """TreePO sampling (w, l, d, b, ...)."""
    verifier: VerifierConfig = field(default_factory=lambda: VerifierConfig(workers=1))
    """Answer checking."""
    inference_stream: str = "policy"
    """Inference stream of the policy workers."""
    sample_stream: str = "trees"
    """Sample stream the scored trees are posted to."""
    trees_in_flight: int = 16
    """Trees sampled at the same time by this worker."""
    max_staleness: int = 2
    """Do not run further ahead of the trainer than this many versions (samples beyond would be dropped)."""
    prompts_per_step: int = 8
    """The trainer's trees per step (to know how many trees a version consumes)."""
    shuffle_seed: int = 0
    """Seed of the per-epoch shuffle of this worker's shard."""
    request_timeout_s: float = 120.0
    """A policy worker that leaves a request unanswered this long is presumed dead."""

    @property
    def staleness(self) -> StalenessRule:
        return StalenessRule(self.max_staleness, self.prompts_per_step)


@dataclass(frozen=True)
class TrainerConfig:
    model: ModelSource = field(default_factory=ModelSource)
    """The starting weights and where versions are pushed."""
    sample_stream: str = "trees"
    """Sample stream the trees arrive on."""
    total_steps: int = 200
    """Optimizer steps; the run ends after the last."""
    prompts_per_step: int = 8
    """Trees (prompts, each with w trajectories) per optimizer step."""
    push_every: int = 1
    """Push weights to the parameter DB every this many steps (and after the last)."""
    max_staleness: int = 2
    """Drop trees whose oldest segment is more than this many versions older than the weights being trained."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """AdamW, the learning-rate schedule (warm-up, then a decay that ends at the last step) and gradient clipping."""
    micro_batch_tokens: int = 8192
    """Most padded tokens per forward/backward pass."""
    pack_trees: bool = True
    """Train each tree as one packed sequence (shared prefixes computed once) when the batch's trees share response
    segments; false: always one row per trajectory."""
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    """Subgroup advantages, whitening and dynamic sampling."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Clip ranges of the loss."""
    keep_versions: int = 4
    """Versions kept in the parameter DB (older ones are garbage-collected; pinned and tagged ones stay)."""
    save_every: int = 50
    """Write a checkpoint every this many steps (and after the last), which a relaunched or resumed trainer continues
    from."""
    tree_picture_every: int = 100
    """Draw one tree of the batch every this many steps (and at the first), `{run_dir}/trees/step-N.png`; 0: never."""
    keep_checkpoints: int = 2
    """Checkpoints kept in the run directory (older ones are deleted)."""
    seed: int = 0
    """torch seed of the trainer."""
    device: str = "auto"
    """torch device of the trained model: auto (the GPU when there is one, else the CPU), cpu, cuda, cuda:1..."""
    group_timeout_s: float = 300.0
    """With several trainers (group count > 1): longest wait for the others, at the rendezvous and in each
    collective; a trainer whose peer died or hangs fails after at most this."""
    threads: int = 1
    """torch CPU threads of this process (0: torch's default)."""

    @property
    def staleness(self) -> StalenessRule:
        return StalenessRule(self.max_staleness, self.prompts_per_step)

    def __post_init__(self) -> None:
        for name in ("save_every", "keep_checkpoints", "push_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class EvaluatorConfig:
    model: ModelSource = field(default_factory=ModelSource)
    """The starting weights (version 0) and the parameter DB whose versions are evaluated."""
    problems: ProblemSource = field(default_factory=lambda: ProblemSource(split="heldout", count=200))
    """The fixed held-out set, the same every evaluation."""
    engine: EngineOptions = field(default_factory=EngineOptions)
    """The engine that answers the held-out problems (greedy)."""
    eval_every: int = 10
    """Evaluate a version at least this many versions after the previous evaluation (and the final one)."""
    max_new_tokens: int | None = None
    """Longest greedy answer; None: room for the synthetic task's answers (64 tokens for short, 256 for long), 64
    for a dataset file."""
    threads: int = 1
    """torch CPU threads of this process (0: torch's default)."""

    def answer_room(self) -> int:
        """The longest greedy answer in tokens."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        from zrl.rl.synthetic import ANSWER_ROOM

        return ANSWER_ROOM[self.problems.task] if self.problems.kind == "synthetic" else ANSWER_ROOM["short"]


def staleness_disagreements(workers: Mapping[str, WorkerGroupConfig]) -> list[str]:
    """One error for each staleness key on which a trainer group and a rollout group differ, naming both keys."""
    trainers = {name: g.config for name, g in workers.items() if isinstance(g.config, TrainerConfig)}
    rollouts = {name: g.config for name, g in workers.items() if isinstance(g.config, RolloutConfig)}
    errors = []
    for trainer, trainer_config in trainers.items():
        for rollout, rollout_config in rollouts.items():
            for key in STALENESS_KEYS:
                ours, theirs = getattr(trainer_config, key), getattr(rollout_config, key)
                if ours != theirs:
                    errors.append(f"workers.{trainer}.config.{key} ({ours}) and workers.{rollout}.config.{key} "
                                  f"({theirs}) must be equal")
    return errors
