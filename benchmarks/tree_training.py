"""Training step on packed trees against one padded row per trajectory, on the tiny model, in the same run.

Real trees of the default experiment's shape (w=16, l=16, d=4, 8 prompts per step) are sampled once with the
tiny model; then `train_step` runs on them alternately with `pack_trees` on and off (fresh model and optimizer
each time, one torch thread). Reported: tokens through the model per step and seconds per step (median), and the
ratio.

Run: python benchmarks/tree_training.py [--prompts 8] [--width 16] [--repeats 5] [--no-doc]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from report import markdown_table, update_section
from transformers import AutoModelForCausalLM

from zrl.engines.hf import HFEngine, HFEngineConfig
from zrl.rl.advantage import AdvantageConfig
from zrl.rl.synthetic import generate_problems
from zrl.rl.tiny_model import build_tiny_model, load_tokenizer
from zrl.rl.train_step import OptimizerConfig, StepConfig, make_optimizer, train_step
from zrl.rl.tree import TreeSampler, TreeSamplerConfig
from zrl.rl.tree_packing import pack_trees


def sample_trees(path, prompts: int, width: int) -> list:
    tokenizer = load_tokenizer(path)
    engine = HFEngine(path, HFEngineConfig(device="cpu", max_batch_size=256))
    try:
        problems = generate_problems("train", prompts, seed=11)
        encoded = [(p.uid, tokenizer(p.prompt, add_special_tokens=False)["input_ids"]) for p in problems]
        config = TreeSamplerConfig(width=width, segment_len=16, max_depth=4, seed=5)
        trees = TreeSampler(config, engine.eos_token_id, tokenizer.decode).run(encoded, engine.generate)
    finally:
        engine.close()
    for tree in trees:
        for index, trajectory in enumerate(tree.trajectories):
            trajectory.reward = float(index % 2)  # rewards that differ within a tree, so every token has a gradient
    return [t for tree in trees for t in tree.trajectories]


def time_steps(path, trajectories: list, pack: bool, repeats: int) -> list[float]:
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    pad = model.config.pad_token_id or 0
    config = StepConfig(OptimizerConfig(lr=1e-5), AdvantageConfig(credit="segment"), pack_trees=pack)
    optimizer, scheduler = make_optimizer(model, config.optimizer)
    seconds = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        train_step(model, optimizer, scheduler, trajectories, config, pad)
        seconds.append(time.perf_counter() - started)
    return seconds[1:]  # the first step pays for lazy initialisation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = build_tiny_model()
    trajectories = sample_trees(path, args.prompts, args.width)
    rows_tokens = sum(len(t.prompt_ids) + len(t.response_ids) for t in trajectories)
    packed_tokens = int((pack_trees(trajectories, -1).input_ids != -1).sum())
    unpacked_s, packed_s = [], []
    for _ in range(2):  # interleaved, so a busy spell of the machine hits both
        unpacked_s += time_steps(path, trajectories, False, args.repeats)
        packed_s += time_steps(path, trajectories, True, args.repeats)
    unpacked, packed = statistics.median(unpacked_s), statistics.median(packed_s)
    rows = [["one row per trajectory", rows_tokens, f"{unpacked:.3f}", "1.00x"],
            ["packed trees", packed_tokens, f"{packed:.3f}", f"{unpacked / packed:.2f}x"]]
    body = (f"`train_step` on {len(trajectories)} trajectories of {args.prompts} real trees (w={args.width}, l=16, "
            f"d=4) of the tiny model, one torch thread, median of {2 * args.repeats} steps each. Tokens: prompt and "
            "response tokens through the model (padding excluded).\n\n"
            + markdown_table(["layout", "tokens per step", "s per step", "speed-up"], rows) + "\n")
    print(body)
    if not args.no_doc:
        update_section("tree_training", "Training step: packed trees against one row per trajectory",
                       "make bench-packing", body)


if __name__ == "__main__":
    main()
