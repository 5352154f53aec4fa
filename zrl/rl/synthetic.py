"""Synthetic multi-step arithmetic problems with worked, line-by-line solutions.

A problem is an expression such as `3+4*2-5`. Its solution reduces the expression one operation at a time
(multiplications first, then left to right), one step per line, and ends in `\\boxed{6}`. Problems are a pure
function of (seed, split, index), and no two splits share an expression: `train` (what models learn from),
`validation` (the only set used to choose settings) and `heldout` (the test set that reported figures are measured
on, which no choice has seen).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

from zrl.rl.problem import Problem

SPLITS = ("train", "validation", "heldout")
PROMPT_TEMPLATE = "Compute {expression}.\n"
# Every character a prompt or a solution may contain; the tiny model's tokenizer is built over it.
ALPHABET = "0123456789+-*=:.,\n Compute so\\boxed{}"


@dataclass(frozen=True)
class ArithmeticConfig:
    """How hard the generated problems are."""

    min_ops: int = 2
    """Fewest binary operations in an expression."""
    max_ops: int = 3
    """Most binary operations in an expression."""
    max_operand: int = 9
    """Operands are drawn from 1..max_operand."""
    operators: str = "+-*"
    """The operators to draw from."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(f"ArithmeticConfig: need 1 <= min_ops <= max_ops, got {self.min_ops}, {self.max_ops}")
        if self.max_operand < 1:
            raise ValueError(f"ArithmeticConfig.max_operand must be >= 1, got {self.max_operand}")
        if not self.operators or set(self.operators) - set("+-*"):
            raise ValueError(f"ArithmeticConfig.operators must be a non-empty subset of '+-*', got {self.operators!r}")


TASKS = {
    "short": ArithmeticConfig(),
    "long": ArithmeticConfig(min_ops=5, max_ops=7),
}
"""The named difficulty levels. short: 2-3 operations, answers of about 45 tokens (3-4 lines). long: 5-7 operations,
answers of about 130 tokens (6-8 lines, 84-202 tokens), long enough that the branches of a tree share a useful
prefix."""


ANSWER_ROOM = {"short": 64, "long": 256}
"""Tokens of room for a greedy answer to each task: past its longest answers (61 and 202 tokens with EOS)."""


def task_config(task: str) -> ArithmeticConfig:
    """The difficulty of a named task; a ValueError names the known ones."""
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[task]


def _reduce_once(operands: list[int], ops: list[str]) -> tuple[str, list[int], list[str]]:
    """Apply the next operation by precedence; return the step text and the shorter expression."""
    index = ops.index("*") if "*" in ops else 0
    a, b, op = operands[index], operands[index + 1], ops[index]
    value = a * b if op == "*" else a + b if op == "+" else a - b
    step = f"{a}{op}{b}={value}"
    return step, operands[:index] + [value] + operands[index + 2 :], ops[:index] + ops[index + 1 :]


def format_expression(operands: list[int], ops: list[str]) -> str:
    text = str(operands[0])
    for op, operand in zip(ops, operands[1:], strict=True):
        text += f"{op}{operand}"
    return text


def solve(operands: list[int], ops: list[str]) -> tuple[str, int]:
    """The worked solution text (ending in `\\boxed{answer}`) and the answer."""
    lines = []
    while ops:
        step, operands, ops = _reduce_once(operands, ops)
        lines.append(f"{step}, so {format_expression(operands, ops)}" if ops else step)
    lines.append(f"\\boxed{{{operands[0]}}}")
    return "\n".join(lines), operands[0]


def _split_of(expression: str) -> str:
    """Assign an expression to a split by its hash, so the splits are disjoint by construction: 1 in 8 held out for
    testing, 1 in 8 for validation, the rest for training."""
    bucket = hashlib.sha256(expression.encode()).digest()[0] % 8
    return "heldout" if bucket == 0 else "validation" if bucket == 1 else "train"


def _draw(rng: random.Random, config: ArithmeticConfig) -> tuple[list[int], list[str]]:
    n_ops = rng.randint(config.min_ops, config.max_ops)
    operands = [rng.randint(1, config.max_operand) for _ in range(n_ops + 1)]
    ops = [rng.choice(config.operators) for _ in range(n_ops)]
    return operands, ops


@dataclass(frozen=True)
class Example:
    """A problem together with its worked solution (the supervised target)."""

    problem: Problem
    solution: str


def generate_examples(
    split: str, count: int, seed: int = 0, config: ArithmeticConfig | None = None
) -> list[Example]:
    """`count` examples of `split` ('train', 'validation' or 'heldout'), the same for the same arguments."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return list(_iter_examples(split, count, seed, config or ArithmeticConfig()))


def _iter_examples(split: str, count: int, seed: int, config: ArithmeticConfig) -> Iterator[Example]:
    rng = random.Random(f"zrl-arith-{seed}-{split}")
    produced = 0
    attempts = 0
    limit = 1000 * max(count, 1)
    while produced < count:
        attempts += 1
        if attempts > limit:
            raise ValueError(
                f"cannot draw {count} {split} problems from {config}: the problem space is too small"
            )
        operands, ops = _draw(rng, config)
        expression = format_expression(operands, ops)
        if _split_of(expression) != split:
            continue
        solution, answer = solve(operands, ops)
        prompt = PROMPT_TEMPLATE.format(expression=expression)
        yield Example(Problem(uid=f"arith-{split}-{seed}-{produced:06d}", prompt=prompt, answer=str(answer)), solution)
        produced += 1


def generate_problems(
    split: str, count: int, seed: int = 0, config: ArithmeticConfig | None = None
) -> list[Problem]:
    """`count` problems of `split`, without their worked solutions."""
    return [example.problem for example in generate_examples(split, count, seed, config)]
