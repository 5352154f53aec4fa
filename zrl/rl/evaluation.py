"""Greedy accuracy of a model on a fixed set of problems: the one judge of every reported accuracy.

The evaluator worker, the learning benchmark's peer and the tests of the shipped tiny model all score a model
here: the same greedy decoding through a zrl engine, the same answer extraction and the same verifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zrl.engines.base import Engine, GenerationRequest, SamplingParams
from zrl.rl.problem import Problem
from zrl.rl.verifier import Verdict, Verifier, VerifierConfig

EVAL_MAX_NEW_TOKENS = 64
"""Longest greedy answer of the default evaluation."""


@dataclass(frozen=True)
class GreedyScore:
    """How a model answered a set of problems, greedily."""

    accuracy: float
    """Fraction judged correct."""
    answered: float
    """Fraction with an answer to judge (a `\\boxed{}`)."""
    mean_response_tokens: float
    """Mean generated tokens per problem."""


def greedy_score(engine: Engine, tokenizer: Any, problems: Sequence[Problem], verifier: Verifier,
                 max_new_tokens: int = EVAL_MAX_NEW_TOKENS) -> GreedyScore:
    """Answer every problem greedily with the engine's current weights and judge the answers with `verifier`."""
    if not problems:
        raise ValueError("greedy_score needs at least one problem")
    greedy = SamplingParams(temperature=0.0)
    requests = [GenerationRequest(tokenizer(p.prompt, add_special_tokens=False)["input_ids"], max_new_tokens, greedy,
                                  str(i)) for i, p in enumerate(problems)]
    results = engine.generate(requests)
    texts = [tokenizer.decode(r.token_ids, skip_special_tokens=True) for r in results]
    verdicts = verifier.verify_many(texts, [p.answer for p in problems])
    count = len(problems)
    return GreedyScore(accuracy=sum(v is Verdict.CORRECT for v in verdicts) / count,
                       answered=sum(v is not Verdict.NO_ANSWER for v in verdicts) / count,
                       mean_response_tokens=sum(len(r.token_ids) for r in results) / count)


def score_model_dir(path: Path | str, problems: Sequence[Problem],
                    max_new_tokens: int = EVAL_MAX_NEW_TOKENS) -> GreedyScore:
    """Greedy accuracy of the model saved in `path`, on the CPU with the `hf` engine (as the evaluator's default)."""
    from zrl.engines.factory import make_engine
    from zrl.rl.tiny_model import load_tokenizer

    engine = make_engine("hf", path, device="cpu")
    try:
        with Verifier(VerifierConfig(workers=1)) as verifier:
            return greedy_score(engine, load_tokenizer(path), problems, verifier, max_new_tokens)
    finally:
        engine.close()
