"""Time grid convention: (c_{k-1}, c_k], time 0 in interval 0, beyond the horizon is censored."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from survival.timegrid import TimeGrid

pytestmark = pytest.mark.unit

GRID = TimeGrid(cuts=[1.0, 2.0, 3.0])


def test_discretize_edge_cases() -> None:
    time = [0.0, 0.5, 1.0, 1.0001, 2.0, 3.0, 3.5, 100.0]
    event = [1, 0, 1, 1, 0, 1, 1, 0]
    index, ev = GRID.discretize(time, event)
    assert index.dtype == np.int64 and ev.dtype == np.float32
    # time 0 → interval 0; exactly at a cut → the interval ending there; beyond → last, censored.
    assert index.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert ev.tolist() == [1, 0, 1, 1, 0, 1, 0, 0]


def test_interval_counts() -> None:
    time = [0.5, 1.5, 1.5, 2.5, 5.0]
    event = [1, 1, 0, 0, 1]
    events, at_risk = GRID.interval_counts(time, event)
    assert events.tolist() == [1, 1, 0]  # the event at 5.0 is past the horizon: censored
    assert at_risk.tolist() == [5, 4, 2]


def test_equal_width_ends_exactly_at_horizon() -> None:
    grid = TimeGrid.equal_width(5000.0, 3)
    assert grid.n_intervals == 3
    assert grid.cuts[-1] == 5000.0 == grid.horizon
    assert grid.cuts[0] == pytest.approx(5000 / 3)
    assert grid.widths() == pytest.approx([5000 / 3] * 3)


@pytest.mark.parametrize(
    ("cuts", "message"),
    [
        ([], "at least 1"),
        ([0.0, 1.0], "positive"),
        ([1.0, 1.0], "increasing"),
        ([2.0, 1.0], "increasing"),
        ([1.0, float("inf")], "finite"),
    ],
)
def test_bad_grids_rejected(cuts: list[float], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TimeGrid(cuts=cuts)


def test_bad_outcomes_rejected() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        GRID.discretize([-1.0], [1])
    with pytest.raises(ValueError, match="non-negative"):
        GRID.discretize([float("nan")], [1])
    with pytest.raises(ValueError, match=r"0 \(censored\) or 1"):
        GRID.discretize([1.0], [2])
    with pytest.raises(ValueError, match="equal length"):
        GRID.discretize([1.0, 2.0], [1])
    with pytest.raises(ValueError, match="n_intervals"):
        TimeGrid.equal_width(10.0, 0)
