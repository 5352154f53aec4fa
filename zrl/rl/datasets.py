"""Math problem loaders for jsonl and parquet files, GSM8K style (`#### n`), MATH style (`\\boxed{}`) or plain.

A malformed row is a DatasetError naming the file and line (jsonl, 1-based) or row (parquet, 1-based), or,
with on_error="skip", is skipped and counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zrl.rl.problem import Problem
from zrl.rl.reward import last_boxed

STYLE_FIELDS: dict[str, tuple[str, str]] = {
    "gsm8k": ("question", "answer"),
    "math": ("problem", "solution"),
    "plain": ("prompt", "answer"),
}
"""Default (prompt field, answer field) of each style."""


@dataclass(frozen=True)
class DatasetConfig:
    """Where the problems are and how their fields read."""

    path: str = ""
    """A .jsonl or .parquet file."""
    format: str = "auto"
    """"jsonl", "parquet", or "auto" (from the file extension)."""
    style: str = "plain"
    """"gsm8k" (answer after ####), "math" (answer in the solution's last \\boxed{}) or "plain" (answer as is)."""
    prompt_field: str | None = None
    """Field holding the problem text; None takes the style's default (question / problem / prompt)."""
    answer_field: str | None = None
    """Field holding the answer or solution; None takes the style's default (answer / solution / answer)."""
    uid_field: str | None = None
    """Field holding a unique id; None uses `{file name}:{line or row}`."""
    prompt_template: str = "{prompt}"
    """Format string that builds the model prompt from the problem text, as {prompt}."""
    on_error: str = "raise"
    """"raise" stops at the first malformed row; "skip" skips and counts malformed rows."""
    limit: int | None = None
    """Keep at most this many problems; None keeps all."""

    def __post_init__(self) -> None:
        errors = []
        if self.format not in ("auto", "jsonl", "parquet"):
            errors.append(f"format={self.format!r} must be 'auto', 'jsonl' or 'parquet'")
        if self.style not in STYLE_FIELDS:
            errors.append(f"style={self.style!r} must be one of {sorted(STYLE_FIELDS)}")
        if self.on_error not in ("raise", "skip"):
            errors.append(f"on_error={self.on_error!r} must be 'raise' or 'skip'")
        if "{prompt}" not in self.prompt_template:
            errors.append(f"prompt_template={self.prompt_template!r} must contain {{prompt}}")
        if self.limit is not None and self.limit < 0:
            errors.append(f"limit={self.limit} must be >= 0 or None")
        if errors:
            raise ValueError("invalid DatasetConfig: " + "; ".join(errors))


class DatasetError(ValueError):
    """A malformed dataset file or row; the message names the file and the line or row."""


@dataclass
class LoadedDataset:
    """The problems read from one file and what was skipped."""

    problems: list[Problem]
    skipped: int = 0
    """Malformed rows skipped under on_error="skip"."""
    skip_reasons: list[str] = field(default_factory=list)
    """The first few skip messages, each naming its file and line or row."""


_MAX_REASONS = 20


def load_problems(config: DatasetConfig) -> LoadedDataset:
    """Read every problem of `config.path`."""
    path = Path(config.path)
    if not path.is_file():
        raise DatasetError(f"dataset file {str(path)!r} does not exist")
    fmt = config.format if config.format != "auto" else _format_from_suffix(path)
    rows = _jsonl_rows(path) if fmt == "jsonl" else _parquet_rows(path)
    default_prompt, default_answer = STYLE_FIELDS[config.style]
    prompt_field = config.prompt_field or default_prompt
    answer_field = config.answer_field or default_answer
    out = LoadedDataset(problems=[])
    seen: dict[str, str] = {}
    for where, number, row in rows:
        if config.limit is not None and len(out.problems) >= config.limit:
            break
        try:
            if isinstance(row, Exception):
                raise row
            problem = _problem(row, where, f"{path.name}:{number}", config, prompt_field, answer_field)
            if problem.uid in seen:
                raise DatasetError(f"{where}: uid {problem.uid!r} repeats the uid of {seen[problem.uid]}")
            seen[problem.uid] = where
        except DatasetError as exc:
            if config.on_error == "raise":
                raise
            out.skipped += 1
            if len(out.skip_reasons) < _MAX_REASONS:
                out.skip_reasons.append(str(exc))
            continue
        out.problems.append(problem)
    return out


def _format_from_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise DatasetError(f"cannot tell the format of {str(path)!r} from its extension; set format")


def _jsonl_rows(path: Path) -> Iterator[tuple[str, int, dict[str, Any] | Exception]]:
    with path.open("r", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, number, DatasetError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(row, dict):
                yield where, number, DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}")
                continue
            yield where, number, row


def _parquet_rows(path: Path) -> Iterator[tuple[str, int, dict[str, Any] | Exception]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a broken file
        raise DatasetError(f"{path}: not a readable parquet file ({exc})") from exc
    number = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            number += 1
            yield f"{path} row {number}", number, row


def _problem(row: dict[str, Any], where: str, default_uid: str, config: DatasetConfig, prompt_field: str,
             answer_field: str) -> Problem:
    prompt = _text_field(row, prompt_field, where)
    raw_answer = _text_field(row, answer_field, where)
    if config.style == "gsm8k":
        if "####" not in raw_answer:
            raise DatasetError(f"{where}: field {answer_field!r} has no '#### <answer>' line")
        answer = raw_answer.rsplit("####", 1)[1].strip().replace(",", "")
    elif config.style == "math":
        boxed = last_boxed(raw_answer)
        if boxed is None:
            raise DatasetError(f"{where}: field {answer_field!r} has no complete \\boxed{{...}} answer")
        answer = boxed.strip()
    else:
        answer = raw_answer.strip()
    if not answer:
        raise DatasetError(f"{where}: field {answer_field!r} gives an empty answer")
    if config.uid_field is not None:
        if row.get(config.uid_field) in (None, ""):
            raise DatasetError(f"{where}: missing uid field {config.uid_field!r}")
        uid = str(row[config.uid_field])
    else:
        uid = default_uid
    # replace, not str.format: templates often hold literal braces, as in "put it in \boxed{}"
    return Problem(uid=uid, prompt=config.prompt_template.replace("{prompt}", prompt), answer=answer)


def _text_field(row: dict[str, Any], name: str, where: str) -> str:
    if name not in row or row[name] is None:
        raise DatasetError(f"{where}: missing field {name!r} (fields: {sorted(row)})")
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DatasetError(f"{where}: field {name!r} must be text, got {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise DatasetError(f"{where}: field {name!r} is empty")
    return text

