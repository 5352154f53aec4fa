"""The peer of the learning benchmark: TRL's GRPOTrainer on zrl's tiny model, data and evaluation set.

    .venv-peer/bin/python benchmarks/trl_grpo_peer.py --minutes 10 --lr 5e-5 --seed 0 --split heldout --output-dir D

Runs in its own virtual environment (`scripts/setup-peer-env.sh`, which installs TRL), with the repository on
PYTHONPATH so that it trains on the same problems and is judged exactly as zrl is: its rewards come from zrl's
`Verifier` (+1/-1, as zrl's), and its evaluations from `zrl.rl.evaluation.greedy_score` (zrl's `hf` engine loaded
with the peer's current weights, the same verifier). Settings: 8 generations per prompt, 8 prompts per step, 64 new
tokens, temperature 1, no KL, DAPO loss, clip 0.2/0.28, gradient checkpointing off (TRL's default is on, which
recomputes every forward pass in the backward pass; the tiny model needs no memory saving). Every `--eval-every-s`
seconds of training time (evaluation excluded) it prints one JSON line with the greedy accuracy on `--split`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from zrl.engines.factory import make_engine
from zrl.rl.evaluation import greedy_score
from zrl.rl.synthetic import SPLITS, generate_problems
from zrl.rl.tiny_model import build_tiny_model
from zrl.rl.verifier import Verifier, VerifierConfig

PROMPTS_PER_STEP = 8
GENERATIONS = 8
MAX_NEW_TOKENS = 64
TRAIN_PROBLEMS = 20000  # as zrl's rollout worker


class TrainingClock(TrainerCallback):
    """Counts training time only, evaluates every `every_s` of it, and stops the run after `limit_s`."""

    def __init__(self, evaluate, every_s: float, limit_s: float):
        self.evaluate, self.every_s, self.limit_s = evaluate, every_s, limit_s
        self.train_s, self.next_eval_s, self.step_started = 0.0, every_s, 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_started = time.monotonic()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.train_s += time.monotonic() - self.step_started
        done = self.train_s >= self.limit_s
        if self.train_s >= self.next_eval_s or done:
            print(json.dumps({"train_s": round(self.train_s, 1), "step": state.global_step,
                              "accuracy": self.evaluate(model)}), flush=True)
            self.next_eval_s += self.every_s
        if done:
            control.should_training_stop = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training time to run for")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0, help="seed of TRL's sampling, shuffling and init")
    parser.add_argument("--split", choices=SPLITS[1:], default="heldout",
                        help="the problems evaluated: validation (for choosing settings) or heldout (the test set)")
    parser.add_argument("--eval-problems", type=int, default=200, help="evaluated problems (zrl's evaluator: 200)")
    parser.add_argument("--eval-every-s", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_path = build_tiny_model()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(model_path))
    tokenizer.padding_side = "left"
    evaluated = generate_problems(args.split, args.eval_problems)
    train = generate_problems("train", TRAIN_PROBLEMS)
    dataset = Dataset.from_dict({"prompt": [p.prompt for p in train], "answer": [p.answer for p in train]})
    verifier = Verifier(VerifierConfig(workers=1))

    def reward(completions: list[str], answer: list[str], **kwargs) -> list[float]:
        return verifier.rewards(completions, answer)[0]

    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    judge_engine = make_engine("hf", model_path, device="cpu")

    def evaluate(m: torch.nn.Module) -> float:
        judge_engine.load_weights({k: v.detach() for k, v in m.state_dict().items()}, version=0)
        return greedy_score(judge_engine, tokenizer, evaluated, verifier, MAX_NEW_TOKENS).accuracy

    print(json.dumps({"train_s": 0.0, "step": 0, "accuracy": evaluate(model)}), flush=True)
    config = GRPOConfig(
        output_dir=args.output_dir, learning_rate=args.lr, num_generations=GENERATIONS,
        per_device_train_batch_size=PROMPTS_PER_STEP * GENERATIONS, gradient_accumulation_steps=1,
        max_completion_length=MAX_NEW_TOKENS, temperature=1.0, beta=0.0, loss_type="dapo", epsilon=0.2,
        epsilon_high=0.28, gradient_checkpointing=False, use_cpu=True, bf16=False, report_to=[],
        save_strategy="no", logging_steps=50, max_steps=1_000_000, seed=args.seed, data_seed=args.seed,
        disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer,
                          callbacks=[TrainingClock(evaluate, args.eval_every_s, args.minutes * 60)])
    checkpointing = getattr(trainer.model, "is_gradient_checkpointing", None)
    print(f"peer: TRL lr {args.lr} seed {args.seed}, gradient checkpointing {checkpointing}", file=sys.stderr, flush=True)
    try:
        trainer.train()
    finally:
        verifier.close()
        judge_engine.close()


if __name__ == "__main__":
    main()
