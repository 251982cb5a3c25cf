"""The metrics release's noise is calibrated to `MetricsLayout.sensitivity`: adding or removing one
held-out patient must never move the weighted release by more, whatever the ties in time."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import site_agent.releases as releases
from federation.releases import MetricsLayout
from site_agent.releases import consortium_censoring, metrics_vector
from survival.timegrid import TimeGrid

pytestmark = pytest.mark.unit

GRID = TimeGrid(cuts=[1.0, 2.0, 3.0, 4.0])
K = 4
# Public: from the (noised) consortium counts, never from the site's own rows.
CENSORING = consortium_censoring(
    GRID, np.array([6.0, 5.0, 4.0, 3.0]), np.array([120.0, 100.0, 80.0, 60.0])
)
TIE_KEY = b"hospital-a|run-1"

# Times from a few values (many ties, the hard case) or anywhere on the grid; risks likewise.
times = st.one_of(
    st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0]),
    st.floats(0.0, 6.0, allow_nan=False),
)
risks = st.one_of(st.sampled_from([-1.0, 0.0, 0.5, 1.0]), st.floats(-5.0, 5.0, allow_nan=False))
curves = st.lists(st.floats(0.0, 1.0), min_size=K, max_size=K).map(
    lambda values: sorted(values, reverse=True)  # survival curves never increase
)
patients = st.tuples(times, st.integers(0, 1), risks, curves)


def _arrays(rows: list[tuple[float, int, float, list[float]]]) -> tuple[np.ndarray, ...]:
    time = np.array([r[0] for r in rows], dtype=np.float64)
    event = np.array([r[1] for r in rows], dtype=np.int64)
    risk = np.array([r[2] for r in rows], dtype=np.float64)
    surv = np.array([r[3] for r in rows], dtype=np.float64).reshape(len(rows), K)
    return time, event, risk, surv


def release(rows: list[tuple[float, int, float, list[float]]], layout: MetricsLayout) -> np.ndarray:
    """The weighted release before noise (what the Gaussian noise is scaled against)."""
    time, event, risk, surv = _arrays(rows)
    values = metrics_vector(time, event, risk, surv, GRID, CENSORING, layout, TIE_KEY)
    return layout.encode(values)


@settings(max_examples=300, deadline=None)
@given(
    cohort=st.lists(patients, min_size=1, max_size=40),
    extra=patients,
    position=st.integers(0, 40),
    window=st.sampled_from([1, 2, 3, 10]),
    cap=st.sampled_from([0.5, 1.0, 4.0]),
)
def test_one_patient_moves_the_weighted_release_by_at_most_the_sensitivity(
    cohort: list[tuple[float, int, float, list[float]]],
    extra: tuple[float, int, float, list[float]],
    position: int,
    window: int,
    cap: float,
) -> None:
    # a cap below the grid's largest cumulative hazard (K = 4 intervals of hazard up to 1) makes
    # the expected-events term's clipping bind
    layout = MetricsLayout(window=window, expected_cap=cap)
    neighbour = [*cohort]
    neighbour.insert(min(position, len(cohort)), extra)  # the same cohort plus one patient
    moved = release(neighbour, layout) - release(cohort, layout)
    assert np.linalg.norm(moved) <= layout.sensitivity * (1 + 1e-9)
    raw = np.abs(layout.decode(moved))
    assert np.all(raw <= np.asarray(layout.raw_sensitivity) * (1 + 1e-9))


@settings(max_examples=100, deadline=None)
@given(cohort=st.lists(patients, min_size=1, max_size=30), seed=st.integers(0, 2**32 - 1))
def test_the_release_does_not_depend_on_the_rows_order(
    cohort: list[tuple[float, int, float, list[float]]], seed: int
) -> None:
    layout = MetricsLayout()
    shuffled = [cohort[i] for i in np.random.default_rng(seed).permutation(len(cohort))]
    np.testing.assert_allclose(release(shuffled, layout), release(cohort, layout), atol=1e-9)


def test_the_weighted_sensitivity_is_at_most_one() -> None:
    layout = MetricsLayout()
    assert layout.sensitivity <= 1.0
    np.testing.assert_allclose(layout.encode(layout.raw_sensitivity), layout.shares)


def test_control_a_tie_order_drawn_per_row_breaks_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The order among tied times used to be a keyed permutation of the row numbers: removing one
    patient reshuffled every tie, and the release moved by more than its sensitivity."""

    def per_row(event: np.ndarray, risk: np.ndarray, key: bytes) -> np.ndarray:
        del risk
        digest = hashlib.sha256(key).digest()
        rng = np.random.Generator(np.random.PCG64(int.from_bytes(digest, "little")))
        return rng.permutation(len(event))

    monkeypatch.setattr(releases, "_tie_break", per_row)
    layout = MetricsLayout()
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(2000):
        rows = [
            (float(rng.integers(1, 5)), int(rng.integers(0, 2)), float(rng.normal()), [0.5] * K)
            for _ in range(60)
        ]
        moved = release(rows, layout) - release(rows[1:], layout)
        worst = max(worst, float(np.linalg.norm(moved)) / layout.sensitivity)
        if worst > 1.0:
            break
    assert worst > 1.0
