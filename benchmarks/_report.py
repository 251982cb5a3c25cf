"""Shared output helpers for the benchmarks: one aligned text table and one JSON list of records.

Kept generic (rows are plain dicts) so every benchmark reports the same way and the JSON files under
``benchmarks/results/`` can be compared across runs without a parser per benchmark.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

__all__ = ["format_cell", "format_table", "print_table", "write_json"]


def format_cell(value: object) -> str:
    """Render one cell: floats with a precision that suits their size, ``None`` as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value == 0.0 or abs(value) >= 100:
            return f"{value:.0f}" if value.is_integer() or abs(value) >= 1000 else f"{value:.1f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return str(value)
    return str(value)


def format_table(rows: Sequence[dict[str, object]], columns: Sequence[str], title: str) -> str:
    """Build the table text: numbers right-aligned, text left-aligned, missing keys as a dash."""
    cells = [[format_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    numeric = [
        all(isinstance(row.get(col), int | float) or row.get(col) is None for row in rows)
        for col in columns
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [title, "=" * max(len(title), 1), line(list(columns))]
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def print_table(rows: list[dict[str, object]], columns: list[str], title: str) -> None:
    """Print ``rows`` as an aligned table with the given column order and a title line."""
    print(format_table(rows, columns, title), flush=True)


def write_json(path: str | Path, rows: list[dict[str, object]]) -> None:
    """Write ``rows`` as a JSON list (creating parent directories), so runs can be diffed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(rows, indent=2, sort_keys=False) + "\n", encoding="utf-8")
