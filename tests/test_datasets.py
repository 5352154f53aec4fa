"""Dataset loaders over small jsonl and parquet files written by the tests, malformed rows included."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zrl.rl.datasets import DatasetConfig, DatasetError, load_problems


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_gsm8k_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "gsm8k.jsonl", [
        {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"},
        {"question": "What is 999 + 1?", "answer": "999 + 1 = 1,000\n#### 1,000"},
    ])
    loaded = load_problems(DatasetConfig(path=str(path), style="gsm8k",
                                         prompt_template="Q: {prompt}\nPut the answer in \\boxed{}.\nA:"))
    assert [p.answer for p in loaded.problems] == ["7", "1000"]
    assert [p.uid for p in loaded.problems] == ["gsm8k.jsonl:1", "gsm8k.jsonl:2"]
    assert loaded.problems[0].prompt == "Q: Tom has 3 apples and buys 4. How many?\nPut the answer in \\boxed{}.\nA:"
    assert loaded.skipped == 0


def test_math_parquet_takes_the_last_boxed_answer(tmp_path):
    path = tmp_path / "math.parquet"
    pq.write_table(pa.table({
        "problem": ["Compute 1/2 + 1/4.", "Simplify sqrt(8)."],
        "solution": ["We get \\boxed{\\frac{3}{4}}.", "First \\boxed{x}, finally \\boxed{2\\sqrt{2}}"],
        "id": ["m1", "m2"],
    }), path)
    loaded = load_problems(DatasetConfig(path=str(path), style="math", uid_field="id"))
    assert [(p.uid, p.answer) for p in loaded.problems] == [("m1", "\\frac{3}{4}"), ("m2", "2\\sqrt{2}")]
    assert loaded.problems[0].prompt == "Compute 1/2 + 1/4."


def test_custom_field_names_and_limit(tmp_path):
    path = write_jsonl(tmp_path / "custom.jsonl", [{"q": f"{i} + {i}?", "a": 2 * i} for i in range(5)])
    loaded = load_problems(DatasetConfig(path=str(path), prompt_field="q", answer_field="a", limit=3))
    assert [p.answer for p in loaded.problems] == ["0", "2", "4"]


MALFORMED = [
    {"question": "ok?", "answer": "#### 1"},
    "{not json",
    {"question": "no marker", "answer": "just 5"},
    ["a", "list"],
    {"answer": "#### 3"},
    {"question": "", "answer": "#### 4"},
    {"question": {"nested": 1}, "answer": "#### 5"},
    {"question": "also ok", "answer": "#### 6"},
]


@pytest.mark.parametrize(("line", "message"), [
    (2, "invalid JSON"),
    (3, "has no '#### <answer>' line"),
    (4, "expected a JSON object, got list"),
    (5, "missing field 'question'"),
    (6, "field 'question' is empty"),
    (7, "field 'question' must be text, got dict"),
])
def test_each_malformed_jsonl_row_is_an_error_naming_file_and_line(tmp_path, line, message):
    rows = [MALFORMED[0]] + [MALFORMED[line - 1]]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DatasetError, match=message) as err:
        load_problems(DatasetConfig(path=str(path), style="gsm8k"))
    assert f"{path}:2" in str(err.value)


def test_malformed_rows_are_skipped_and_counted_on_request(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", MALFORMED)
    loaded = load_problems(DatasetConfig(path=str(path), style="gsm8k", on_error="skip"))
    assert [p.answer for p in loaded.problems] == ["1", "6"]
    assert [p.uid for p in loaded.problems] == ["bad.jsonl:1", "bad.jsonl:8"]
    assert loaded.skipped == 6
    assert all(str(path) in reason for reason in loaded.skip_reasons)


def test_malformed_parquet_row_names_the_row(tmp_path):
    path = tmp_path / "math.parquet"
    pq.write_table(pa.table({"problem": ["a", "b", "c"],
                             "solution": ["\\boxed{1}", "no box here", "\\boxed{3"]}), path)
    with pytest.raises(DatasetError, match=r"math.parquet row 2: field 'solution' has no complete"):
        load_problems(DatasetConfig(path=str(path), style="math"))
    loaded = load_problems(DatasetConfig(path=str(path), style="math", on_error="skip"))
    assert [p.answer for p in loaded.problems] == ["1"]
    assert loaded.skipped == 2


def test_duplicate_uids_are_rejected(tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [{"id": "x", "prompt": "p", "answer": "1"},
                                                {"id": "x", "prompt": "q", "answer": "2"}])
    with pytest.raises(DatasetError, match=r"dup.jsonl:2: uid 'x' repeats the uid of .*dup.jsonl:1"):
        load_problems(DatasetConfig(path=str(path), uid_field="id"))


def test_file_level_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_problems(DatasetConfig(path=str(tmp_path / "missing.jsonl")))
    odd = tmp_path / "data.csv"
    odd.write_text("a,b\n")
    with pytest.raises(DatasetError, match="cannot tell the format"):
        load_problems(DatasetConfig(path=str(odd)))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(DatasetError, match="not a readable parquet file"):
        load_problems(DatasetConfig(path=str(broken)))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="style='csv'"):
        DatasetConfig(style="csv")
    with pytest.raises(ValueError, match="on_error='ignore'"):
        DatasetConfig(on_error="ignore")
    with pytest.raises(ValueError, match="must contain {prompt}"):
        DatasetConfig(prompt_template="no placeholder")
