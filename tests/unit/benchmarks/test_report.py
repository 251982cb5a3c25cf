"""The shared benchmark report helpers: aligned tables and JSON records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.benchmarks._load import load

pytestmark = pytest.mark.unit

report = load("_report")


def test_table_aligns_columns_and_keeps_order(capsys: pytest.CaptureFixture[str]) -> None:
    rows: list[dict[str, object]] = [
        {"impl": "a", "ms": 1.5, "n": 3},
        {"impl": "longer-name", "ms": 1234.25, "n": 50, "extra": "ignored"},
    ]
    report.print_table(rows, ["n", "impl", "ms"], "Title here")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Title here"
    header, rule, first, second = lines[2], lines[3], lines[4], lines[5]
    assert header.split() == ["n", "impl", "ms"]
    assert "extra" not in header and "ignored" not in second
    # every line is cut into the same column widths as the rule under the header
    widths = [len(part) for part in rule.split("  ")]
    assert widths == [2, len("longer-name"), len("1234")]
    assert first.split() == ["3", "a", "1.50"]
    assert second.split() == ["50", "longer-name", "1234"]
    # numbers right-aligned, text left-aligned
    assert first.startswith(" 3  a ")
    assert first.endswith(" 1.50")


def test_missing_values_print_as_dash(capsys: pytest.CaptureFixture[str]) -> None:
    report.print_table([{"a": None}, {}], ["a"], "t")
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == ["-", "-"]


def test_write_json_creates_parents_and_round_trips(tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [{"impl": "x", "ms": 1.25, "ok": True}, {"impl": "y"}]
    target = tmp_path / "deep" / "er" / "out.json"
    report.write_json(target, rows)
    assert json.loads(target.read_text(encoding="utf-8")) == rows
    report.write_json(str(target), [])
    assert json.loads(target.read_text(encoding="utf-8")) == []
