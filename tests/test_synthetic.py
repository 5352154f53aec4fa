import re

import pytest

from zrl.rl.synthetic import (
    ALPHABET,
    ANSWER_ROOM,
    ArithmeticConfig,
    generate_examples,
    generate_problems,
    task_config,
)


def _evaluate(expression: str) -> int:
    assert re.fullmatch(r"[0-9+\-*]+", expression)
    return eval(expression)  # the expression is checked to hold only digits and + - *


def test_same_seed_same_problems_and_seed_changes_them():
    assert generate_problems("train", 50, seed=3) == generate_problems("train", 50, seed=3)
    assert generate_problems("train", 50, seed=3) != generate_problems("train", 50, seed=4)


def test_splits_do_not_overlap():
    train = {p.prompt for p in generate_problems("train", 3000)}
    validation = {p.prompt for p in generate_problems("validation", 500)}
    heldout = {p.prompt for p in generate_problems("heldout", 500)}
    assert train and validation and heldout
    assert not train & heldout and not train & validation and not validation & heldout


def test_the_test_set_is_the_same_as_before_the_validation_split():
    # The held-out (test) problems kept their expressions and order when validation was carved out of training.
    assert [p.prompt for p in generate_problems("heldout", 3)] == [
        "Compute 4+1-5-4.\n", "Compute 4+5-5-7.\n", "Compute 7+3+4+2.\n"]


def test_answers_are_correct_and_solutions_end_in_boxed_answer():
    for example in generate_examples("heldout", 300, seed=1):
        expression = re.fullmatch(r"Compute (.+)\.\n", example.problem.prompt).group(1)
        assert example.problem.answer == str(_evaluate(expression))
        lines = example.solution.split("\n")
        assert lines[-1] == f"\\boxed{{{example.problem.answer}}}"
        # One step per line: every line but the last applies one operation correctly.
        for line in lines[:-1]:
            step = line.split(",")[0]
            left, value = step.split("=")
            assert _evaluate(left) == int(value)
        assert set(example.problem.prompt + example.solution) <= set(ALPHABET)


def test_difficulty_is_configurable():
    config = ArithmeticConfig(min_ops=4, max_ops=4, max_operand=3, operators="+*")
    for problem in generate_problems("train", 100, config=config):
        expression = problem.prompt[len("Compute ") : -2]
        assert len(re.findall(r"[+*]", expression)) == 4
        assert "-" not in expression
        assert all(1 <= int(n) <= 3 for n in re.split(r"[+*]", expression))


def test_solutions_span_several_segments():
    lengths = [len(e.solution) for e in generate_examples("train", 200)]
    assert min(lengths) >= 16 and sum(lengths) / len(lengths) >= 32


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown split 'test'"):
        generate_problems("test", 1)
    with pytest.raises(ValueError, match="min_ops"):
        ArithmeticConfig(min_ops=3, max_ops=2)
    with pytest.raises(ValueError, match="operators"):
        ArithmeticConfig(operators="/")
    # A space of one expression lies wholly in one split, so the other split cannot be drawn.
    single = ArithmeticConfig(min_ops=1, max_ops=1, max_operand=1, operators="+")
    failures = 0
    for split in ("train", "validation", "heldout"):
        try:
            generate_problems(split, 1, config=single)
        except ValueError as error:
            assert "too small" in str(error)
            failures += 1
    assert failures == 2


def test_the_long_task_has_answers_of_six_to_eight_lines_and_about_130_tokens():
    examples = generate_examples("train", 300, config=task_config("long"))
    lines = [len(e.solution.splitlines()) for e in examples]
    tokens = [len(e.solution) + 1 for e in examples]  # characters are the tiny model's tokens, and one EOS
    assert min(lines) == 6 and max(lines) == 8
    assert 100 <= sum(tokens) / len(tokens) <= 160 and max(tokens) < ANSWER_ROOM["long"]
    short = [len(e.solution) + 1 for e in generate_examples("train", 300, config=task_config("short"))]
    assert max(short) < ANSWER_ROOM["short"]
    with pytest.raises(ValueError, match="unknown synthetic task 'huge'; known tasks: short, long"):
        task_config("huge")
