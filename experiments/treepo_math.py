# python -m zrl.controller experiments/treepo_math.py
# TreePO on math problems. The defaults run anywhere, CPU only and offline: the tiny built-in model learns
# synthetic arithmetic, and held-out greedy accuracy is evaluated as it trains. On a cluster, the same file:
#   python -m zrl.controller experiments/treepo_math.py model.path=/models/Qwen2.5-Math-1.5B engine=vllm \
#       dataset.kind=file dataset.path=/data/gsm8k.jsonl dataset.style=gsm8k scheduler=slurm \
#       name_resolve=redis://head:6379/0 workers.rollout.count=8 workers.policy.count=4
# Every key: python -m zrl.controller experiments/treepo_math.py --help

from zrl.config import ControllerTimeouts, ExperimentConfig, Resources, WorkerGroupConfig
from zrl.rl.advantage import AdvantageConfig
from zrl.rl.staleness import StalenessRule
from zrl.rl.train_step import OptimizerConfig
from zrl.rl.tree.config import TreeSamplerConfig
from zrl.workers.treepo_config import EvaluatorConfig, PolicyConfig, RolloutConfig, TrainerConfig

# About 9 minutes on a 2-core CPU: as long as the learning benchmark gives the peer (docs/benchmarks.md).
TOTAL_STEPS = 2000
# The trainer and the rollout workers share one staleness rule; the aliases prompts_per_step= and max_staleness=
# set it in both.
STALENESS = StalenessRule(max_staleness=2, prompts_per_step=8)
# A cosine decay to a tenth at the last step, from a higher peak: the curve climbs faster early and steadies late.
LEARNING_RATE = 8e-5
LR_DECAY = "cosine"
# Independent samples with GRPO's per-group scaling. Trees (tree.mode=tree) learned less per step on this short
# task; on the long one (task=long), even with the engine's prefix reuse and 4 initial paths, they were 8.7 points
# below at minute 5 at equal wall-clock (README, "Trees or independent samples").
SAMPLING_MODE = "independent"
# An evaluation about every 30 s: it shares the CPU with training, so each one slows the run a little.
EVAL_EVERY = 100
# Small micro-batches of rows sorted by length: less padding, and activations that stay in the CPU's cache.
MICRO_BATCH_TOKENS = 2048

GROUPS = ("policy", "rollout", "trainer", "evaluator")


def _each(groups: tuple[str, ...], key: str) -> tuple[str, ...]:
    return tuple(f"workers.{group}.config.{key}" for group in groups)


ALIASES = {
    "model.path": _each(GROUPS, "model.path"),
    "paramdb_root": _each(GROUPS, "model.paramdb_root"),
    "engine": _each(("policy", "evaluator"), "engine.kind"),
    "dtype": _each(("policy", "evaluator"), "engine.dtype"),
    "max_model_len": _each(("policy", "evaluator"), "engine.max_model_len"),
    # The synthetic task and its built-in tiny model: short (2-3 operations) or long (5-7 operations).
    "task": _each(("rollout", "evaluator"), "problems.task") + _each(GROUPS, "model.builtin"),
    "dataset.kind": _each(("rollout",), "problems.kind"),
    "dataset.path": _each(("rollout",), "problems.file.path"),
    "dataset.style": _each(("rollout",), "problems.file.style"),
    "dataset.prompt_template": _each(("rollout",), "problems.file.prompt_template"),
    "heldout.kind": _each(("evaluator",), "problems.kind"),
    "heldout.path": _each(("evaluator",), "problems.file.path"),
    "heldout.style": _each(("evaluator",), "problems.file.style"),
    "heldout.prompt_template": _each(("evaluator",), "problems.file.prompt_template"),
    "heldout.count": _each(("evaluator",), "problems.count"),
    # Choose settings on heldout.split=validation; report on the default, heldout (the test set).
    "heldout.split": _each(("evaluator",), "problems.split"),
    # One seed for the run: the trainer's torch seed, the policy engine's sampler and the rollout's shuffle.
    "seed": ("workers.trainer.config.seed", "workers.policy.config.engine.seed", "workers.rollout.config.shuffle_seed"),
    "total_steps": _each(("trainer",), "total_steps"),
    "prompts_per_step": _each(("trainer", "rollout"), "prompts_per_step"),
    "max_staleness": _each(("trainer", "rollout"), "max_staleness"),
    "push_every": _each(("trainer",), "push_every"),
    "save_every": _each(("trainer",), "save_every"),
    "lr": _each(("trainer",), "optimizer.lr"),
    "lr_decay": _each(("trainer",), "optimizer.decay"),
    "min_lr_ratio": _each(("trainer",), "optimizer.min_lr_ratio"),
    "credit": _each(("trainer",), "advantage.credit"),
    "advantage_scale": _each(("trainer",), "advantage.scale"),
    "dynamic_sampling": _each(("trainer",), "advantage.dynamic_sampling"),
    "pack_trees": _each(("trainer",), "pack_trees"),
    "micro_batch_tokens": _each(("trainer",), "micro_batch_tokens"),
    "trainers": ("workers.trainer.count",),
    # A picture of one sampled tree at every evaluation: {run_dir}/trees/step-N.png.
    "eval_every": _each(("evaluator",), "eval_every") + _each(("trainer",), "tree_picture_every"),
    "max_new_tokens": _each(("evaluator",), "max_new_tokens"),
    **{f"tree.{key}": _each(("rollout",), f"tree.{key}")
       for key in ("width", "segment_len", "max_depth", "branching", "mode", "temperature", "split",
                   "random_initial_divergence", "divergence_min", "divergence_max")},
}


def experiment() -> ExperimentConfig:
    return ExperimentConfig(
        experiment="treepo_math",
        done_when=("trainer", "evaluator"),
        progress_interval_s=5.0,
        # A training step or an evaluation keeps _poll busy for a while; configure builds the tiny model once.
        timeouts=ControllerTimeouts(request_s=600.0, poll_stall_s=600.0),
        aliases=ALIASES,
        workers={
            "policy": WorkerGroupConfig(type="policy", config=PolicyConfig(),
                                        resources=Resources(cpus=1, memory_mb=4096)),
            "trainer": WorkerGroupConfig(
                type="trainer", resources=Resources(cpus=1, memory_mb=4096),
                config=TrainerConfig(total_steps=TOTAL_STEPS, **vars(STALENESS),
                                     optimizer=OptimizerConfig(lr=LEARNING_RATE, decay=LR_DECAY),
                                     micro_batch_tokens=MICRO_BATCH_TOKENS, tree_picture_every=EVAL_EVERY,
                                     advantage=AdvantageConfig(credit="trajectory", scale="tree"))),
            "evaluator": WorkerGroupConfig(type="evaluator", config=EvaluatorConfig(eval_every=EVAL_EVERY),
                                           resources=Resources(cpus=1, memory_mb=2048)),
            "rollout": WorkerGroupConfig(
                type="rollout", after=("policy", "trainer", "evaluator"), resources=Resources(cpus=1, memory_mb=2048),
                config=RolloutConfig(tree=TreeSamplerConfig(width=8, segment_len=16, max_depth=4, mode=SAMPLING_MODE),
                                     **vars(STALENESS))),
        },
    )
