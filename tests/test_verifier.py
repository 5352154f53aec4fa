"""math-verify in a real spawn process pool, including a hung check that must be abandoned."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from zrl.rl.tree import Trajectory
from zrl.rl.verifier import Verdict, Verifier, VerifierConfig, math_verify_equal, plain_integers_equal


def sleepy_verify(predicted: str, truth: str) -> bool:
    """Hangs on the answer "hang" after writing its pid to the file named by `truth`; else compares floats."""
    if predicted == "hang":
        Path(truth).write_text(str(os.getpid()))
        time.sleep(120)
    if predicted == "crash":
        os._exit(3)
    if predicted == "raise":
        raise ValueError("cannot parse")
    return float(predicted) == float(truth)


def crash_on_boom(predicted: str, truth: str) -> bool:
    """Kills its process on the answer "boom" while the other checks, which take longer, are still running."""
    if predicted == "boom":
        time.sleep(0.3)
        os._exit(1)
    time.sleep(1.0)
    return float(predicted) == float(truth)


@pytest.fixture(scope="module")
def math_verifier():
    with Verifier(VerifierConfig(workers=2, timeout_s=20.0)) as verifier:
        yield verifier


def test_math_verify_judges_equivalent_forms(math_verifier):
    responses = ["so the answer is \\boxed{\\frac{1}{2}}", "\\boxed{3}", "I think 7", "\\boxed{ 12 }",
                 "\\boxed{2\\sqrt{2}}"]
    truths = ["0.5", "4", "7", "12", "\\sqrt{8}"]
    before = math_verifier.stats.shortcut
    verdicts = math_verifier.verify_many(responses, truths)
    assert verdicts == [Verdict.CORRECT, Verdict.WRONG, Verdict.NO_ANSWER, Verdict.CORRECT, Verdict.CORRECT]
    # "12" is the truth as text and "3" against "4" two integers: both judged without the pool.
    assert math_verifier.stats.shortcut == before + 2


@pytest.mark.parametrize(("predicted", "truth"), [("007", "7"), ("-0", "0"), ("+5", "5"), ("-3", "3"), ("12", "13"),
                                                  (" 41 ", "42"), ("123456789012345678901", "123456789012345678901")])
def test_plain_integers_are_judged_as_math_verify_judges_them(predicted, truth):
    assert plain_integers_equal(predicted, truth) is math_verify_equal(predicted, truth)


@pytest.mark.parametrize(("predicted", "truth"), [("1/2", "0.5"), ("12", "12.0"), ("1,000", "1000"), ("4 2", "43"), ("x", "3")])
def test_anything_but_two_plain_integers_is_left_to_math_verify(predicted, truth):
    assert plain_integers_equal(predicted, truth) is None


def test_integer_answers_are_judged_without_starting_the_pool():
    with Verifier(VerifierConfig(workers=1)) as verifier:
        verdicts = verifier.verify_many(["\\boxed{007}", "\\boxed{-3}", "so \\boxed{ 1 2 }"], ["7", "3", "12"])
        assert verdicts == [Verdict.CORRECT, Verdict.WRONG, Verdict.CORRECT]
        assert verifier.stats.shortcut == 3
        assert verifier._pool is None


def test_rewards_and_overlong_penalty(math_verifier):
    rewards, verdicts = math_verifier.rewards(["\\boxed{1/2}", "\\boxed{5}"], ["\\frac{1}{2}", "6"])
    assert rewards == [1.0, -1.0]
    penalised = Verifier(VerifierConfig(overlong_buffer=4), verify_fn=sleepy_verify)
    with penalised:
        rewards, _ = penalised.rewards(["\\boxed{2}", "\\boxed{2}", "none"], ["2", "2", "2"], lengths=[6, 8, 10],
                                       cap=10)
        assert rewards == pytest.approx([1.0, 0.5, -2.0])
        with pytest.raises(ValueError, match="pass lengths and cap"):
            penalised.rewards(["\\boxed{2}"], ["2"])


def test_score_trajectories_fills_rewards(math_verifier):
    def decode(ids):
        return "".join(chr(i) for i in ids)

    trajs = [Trajectory(uid=u, prompt_ids=[1], response_ids=[ord(c) for c in text], logprobs=[0.0] * len(text),
                        segment_ids=[0], segment_tokens=[len(text)], versions=[0], status="finished")
             for u, text in [("a", "\\boxed{0.25}"), ("b", "\\boxed{9}")]]
    verdicts = math_verifier.score_trajectories(trajs, {"a": "1/4", "b": "10"}, decode)
    assert verdicts == [Verdict.CORRECT, Verdict.WRONG]
    assert [t.reward for t in trajs] == [1.0, -1.0]
    with pytest.raises(ValueError, match=r"no ground-truth answer for prompt uid\(s\) \['b'\]"):
        math_verifier.score_trajectories(trajs, {"a": "1/4"}, decode)


def test_a_hung_check_times_out_is_killed_and_the_rest_are_scored(tmp_path):
    pid_file = tmp_path / "hung.pid"
    config = VerifierConfig(workers=2, timeout_s=1.5)
    with Verifier(config, verify_fn=sleepy_verify) as verifier:
        responses = ["\\boxed{1.0}", "\\boxed{hang}", "\\boxed{2}", "\\boxed{3}", "\\boxed{4}"]
        truths = ["1", str(pid_file), "2.0", "3.5", "4.0"]
        start = time.monotonic()
        verdicts = verifier.verify_many(responses, truths)
        elapsed = time.monotonic() - start
        assert verdicts == [Verdict.CORRECT, Verdict.TIMEOUT, Verdict.CORRECT, Verdict.WRONG, Verdict.CORRECT]
        assert verifier.stats.timeouts == 1
        assert verifier.stats.pool_restarts == 1
        assert elapsed < 60, f"a hung check blocked scoring for {elapsed:.1f}s"
        hung_pid = int(pid_file.read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(hung_pid, 0)
        # the replacement pool keeps serving
        assert verifier.verify_many(["\\boxed{5}"], ["5.0"]) == [Verdict.CORRECT]
        rewards, _ = verifier.rewards(["\\boxed{hang}"], [str(tmp_path / "again.pid")])
        assert rewards == [-1.0]
        assert verifier.stats.timeouts == 2


def test_a_crashing_or_raising_check_is_an_error_not_a_block():
    with Verifier(VerifierConfig(workers=2, timeout_s=10.0), verify_fn=sleepy_verify) as verifier:
        verdicts = verifier.verify_many(["\\boxed{crash}", "\\boxed{raise}", "\\boxed{6}"], ["1", "1", "6.0"])
        assert verdicts == [Verdict.ERROR, Verdict.ERROR, Verdict.CORRECT]
        assert verifier.stats.errors == 2
        assert verifier.verify_many(["\\boxed{7}"], ["7.0"]) == [Verdict.CORRECT]


def test_config_and_input_errors_are_named():
    with pytest.raises(ValueError, match="start_method='fork'"):
        VerifierConfig(start_method="fork")
    with pytest.raises(ValueError, match="2 responses but 1 ground-truth answers"):
        Verifier(VerifierConfig()).verify_many(["a", "b"], ["c"])


@pytest.mark.parametrize("crash_at", [0, 2])
def test_a_crash_is_charged_only_to_the_answer_that_caused_it(crash_at):
    # max_attempts=1: a single charge is an ERROR, so an innocent answer charged for the crash would show
    answers = [("1", "1.0", Verdict.CORRECT), ("2", "2.5", Verdict.WRONG), ("3", "3.0", Verdict.CORRECT),
               ("4", "4.0", Verdict.CORRECT)]
    answers.insert(crash_at, ("boom", "0", Verdict.ERROR))
    with Verifier(VerifierConfig(workers=3, timeout_s=30.0, max_attempts=1), verify_fn=crash_on_boom) as verifier:
        verdicts = verifier.verify_many([f"\\boxed{{{a}}}" for a, _, _ in answers], [t for _, t, _ in answers])
        assert verdicts == [v for _, _, v in answers]
        assert verifier.stats.errors == 1
        assert verifier.verify_many(["\\boxed{5}"], ["5.0"]) == [Verdict.CORRECT]


def test_math_verify_timeout_warnings_do_not_reach_the_logs(capfd):
    with Verifier(VerifierConfig(workers=2, timeout_s=20.0)) as verifier:
        responses = [f"\\boxed{{\\frac{{{n}}}{{2}}}}" for n in range(1, 9)]
        verdicts = verifier.verify_many(responses, [str(n / 2) for n in range(1, 9)])
    assert verdicts == [Verdict.CORRECT] * 8
    captured = capfd.readouterr()
    assert "Timeout is disabled" not in captured.err + captured.out


def test_only_the_timeout_warning_of_math_verify_is_silenced(caplog):
    from zrl.rl.verifier import quiet_math_verify_timeout_warnings

    quiet_math_verify_timeout_warnings()
    with caplog.at_level(logging.WARNING):
        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).warning("Timeout is disabled as timeout_seconds is None or <= 0")
            logging.getLogger(name).warning("could not parse %s", "x^")
    assert [r.getMessage() for r in caplog.records] == ["could not parse x^"] * 2
