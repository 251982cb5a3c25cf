"""The secagg benchmark's own logic (grid, ratios, targets); the timed runs need the bench venv."""

from __future__ import annotations

import pytest

from tests.unit.benchmarks._load import load

pytestmark = pytest.mark.unit

bench = load("secagg_bench")


def _cells(quick: bool) -> list[tuple[int, int, int]]:
    return [(c.d, c.n, c.dropped) for c in bench.grid(quick)]


def test_quick_grid_is_d1e6_n10_dropped_0_and_1() -> None:
    assert _cells(True) == [(1_000_000, 10, 0), (1_000_000, 10, 1)]


def test_full_grid_deduplicates_dropped_counts() -> None:
    cells = _cells(False)
    assert len(cells) == len(set(cells))
    for d in (100_000, 1_000_000):
        assert [(n, k) for dd, n, k in cells if dd == d] == [
            (3, 0),
            (3, 1),
            (10, 0),
            (10, 1),
            (10, 2),
            (50, 0),
            (50, 1),
            (50, 10),
        ]


def test_threshold_leaves_enough_survivors_in_every_cell() -> None:
    for _, n, dropped in _cells(False):
        t = bench.threshold_for(n)
        assert n / 2 < t <= n - dropped
        assert len(bench.dropped_ids(n, dropped)) == dropped


def _rec(impl: str, mask: float, unmask: float, upload: int, dropped: int = 0) -> dict[str, object]:
    return {
        "impl": impl,
        "d": 1_000_000,
        "n": 10,
        "dropped": dropped,
        "client_mask_ms": mask,
        "server_unmask_ms": unmask,
        "upload_bytes": upload,
    }


def test_ratios_pair_matching_cells_only() -> None:
    records = [
        _rec(bench.CONCORDIA, 10.0, 20.0, 4_000_000),
        _rec(bench.FLOWER, 90.0, 300.0, 8_000_000),
        _rec(bench.CONCORDIA, 10.0, 30.0, 4_000_000, dropped=1),
    ]
    rows = bench.ratio_rows(records)
    assert len(rows) == 1
    assert rows[0]["client_mask_x"] == pytest.approx(9.0)
    assert rows[0]["server_unmask_x"] == pytest.approx(15.0)
    assert rows[0]["upload_x"] == pytest.approx(2.0)


def test_targets_pass_and_miss() -> None:
    passing = [
        _rec(bench.CONCORDIA, 9.0, 25.0, 4_100_000),
        _rec(bench.CONCORDIA, 9.0, 35.0, 4_100_000, dropped=1),
        _rec(bench.FLOWER, 81.0, 300.0, 8_000_000),
    ]
    assert [r["result"] for r in bench.target_rows(passing)] == ["pass"] * 5
    missing = [
        _rec(bench.CONCORDIA, 16.0, 26.0, 4_100_001),
        _rec(bench.CONCORDIA, 16.0, 36.0, 4_000_000, dropped=1),
        _rec(bench.FLOWER, 100.0, 300.0, 8_000_000),
    ]
    assert [r["result"] for r in bench.target_rows(missing)] == ["MISS"] * 5
    assert {r["result"] for r in bench.target_rows([])} == {"not measured"}
