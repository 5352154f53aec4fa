from pathlib import Path

from benchmarks.report import markdown_table, update_section


def test_update_section_replaces_only_its_own_section(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    update_section("a", "A", "make a", "first a", path=doc)
    update_section("b", "B", "make b", "first b", path=doc)
    update_section("a", "A", "make a", "second a", path=doc)
    text = doc.read_text()
    assert "second a" in text and "first a" not in text
    assert "first b" in text
    assert text.index("second a") < text.index("first b"), "a section keeps its place when rewritten"
    assert text.count("<!-- begin a -->") == 1


def test_markdown_table_has_header_separator_and_rows() -> None:
    table = markdown_table(["x", "y"], [[1, 2.5], ["a", "b"]]).splitlines()
    assert table == ["| x | y |", "|---|---|", "| 1 | 2.5 |", "| a | b |"]
