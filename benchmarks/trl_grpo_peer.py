"""The peer of the learning benchmark: TRL's GRPOTrainer on zrl's tiny model, data and held-out set.

    .venv-peer/bin/python benchmarks/trl_grpo_peer.py --minutes 10 --lr 3e-5

Runs in its own virtual environment (`scripts/setup-peer-env.sh`, which installs TRL), with the repository on
PYTHONPATH so that it reads the same problems and checks answers the same way as zrl. Settings: 8 generations per
prompt, 8 prompts per step, 64 new tokens, temperature 1, no KL, DAPO loss, clip 0.2/0.28. Every `--eval-every-s`
seconds of training time (evaluation excluded) it prints one JSON line with the greedy held-out accuracy.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from zrl.rl.reward import last_boxed
from zrl.rl.synthetic import generate_problems
from zrl.rl.tiny_model import build_tiny_model

PROMPTS_PER_STEP = 8
GENERATIONS = 8
MAX_NEW_TOKENS = 64


def greedy_accuracy(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, problems: list) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(problems), 100):
            chunk = problems[start:start + 100]
            batch = tokenizer([p.prompt for p in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            correct += sum(last_boxed(text) == p.answer for text, p in zip(texts, chunk, strict=True))
    model.train()
    return correct / len(problems)


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
                              "heldout_accuracy": self.evaluate(model)}), flush=True)
            self.next_eval_s += self.every_s
        if done:
            control.should_training_stop = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training time to run for")
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--eval-every-s", type=float, default=60.0)
    parser.add_argument("--heldout", type=int, default=200, help="held-out problems (zrl's evaluator uses 200)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_path = build_tiny_model()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(model_path))
    tokenizer.padding_side = "left"
    heldout = generate_problems("heldout", args.heldout)
    train = generate_problems("train", 20000)
    dataset = Dataset.from_dict({"prompt": [p.prompt for p in train], "answer": [p.answer for p in train]})

    def reward(completions: list[str], answer: list[str], **kwargs) -> list[float]:
        return [1.0 if last_boxed(c) == a else 0.0 for c, a in zip(completions, answer, strict=True)]

    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)

    def evaluate(m: torch.nn.Module) -> float:
        return greedy_accuracy(m, tokenizer, heldout)

    print(json.dumps({"train_s": 0.0, "step": 0, "heldout_accuracy": evaluate(model)}), flush=True)
    config = GRPOConfig(
        output_dir=args.output_dir, learning_rate=args.lr, num_generations=GENERATIONS,
        per_device_train_batch_size=PROMPTS_PER_STEP * GENERATIONS, gradient_accumulation_steps=1,
        max_completion_length=MAX_NEW_TOKENS, temperature=1.0, beta=0.0, loss_type="dapo", epsilon=0.2,
        epsilon_high=0.28, use_cpu=True, bf16=False, report_to=[], save_strategy="no", logging_steps=50,
        max_steps=1_000_000, seed=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer,
                          callbacks=[TrainingClock(evaluate, args.eval_every_s, args.minutes * 60)])
    trainer.train()


if __name__ == "__main__":
    main()
