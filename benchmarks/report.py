"""Shared output for the benchmarks: a printed table and a section of docs/benchmarks.md.

Each benchmark owns one section of docs/benchmarks.md, between `<!-- begin NAME -->` and `<!-- end NAME -->`, and
rewrites only that section, so the file keeps the latest figures of every benchmark.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nLatest figures of every benchmark in `benchmarks/`. Each section names the command that produced it.\n"


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(measured: str | None = None) -> str:
    return (f"{measured or datetime.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {sys.version.split()[0]}")


def update_section(name: str, title: str, command: str, body: str, path: Path = DOC_PATH,
                   measured: str | None = None) -> None:
    """Replace (or append) the section `name` of the benchmarks document (`measured`: the date of the figures, when
    they were measured on another day than today)."""
    section = (f"<!-- begin {name} -->\n## {title}\n\nCommand: `{command}`  \nMeasured: {machine_line(measured)}\n\n"
               f"{body.strip()}\n<!-- end {name} -->")
    text = path.read_text() if path.exists() else HEADER
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
