"""Release layouts: the sensitivity a site noises with really bounds one patient's influence."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.releases import (
    MIN_NUMERIC_VARIANCE,
    StatsLayout,
    decode_stats,
    encoded_bounds,
    stats_vector,
)
from survival.data import FLCHAIN_SCHEMA
from survival.timegrid import TimeGrid

pytestmark = pytest.mark.unit

GRID = TimeGrid(cuts=[float(c) for c in range(100, 2100, 100)])
SCHEMA = FLCHAIN_SCHEMA


def _patients(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random encoded rows within the public bounds, one-hot per categorical feature."""
    low, high = encoded_bounds(SCHEMA)
    raw = np.zeros((n, low.size))
    index = 0
    for feature in SCHEMA.features:
        width = len(feature.encoded_names())
        if feature.kind == "numeric":
            raw[:, index] = rng.uniform(low[index], high[index], n)
            if width == 2:
                raw[:, index + 1] = rng.integers(0, 2, n)
        else:
            level = rng.integers(0, width + 1, n)  # 0 = reference level
            for j in range(width):
                raw[:, index + j] = level == j + 1
        index += width
    time = rng.uniform(1.0, 2500.0, n)
    event = rng.integers(0, 2, n)
    return raw, time, event


def _release(raw: np.ndarray, time: np.ndarray, event: np.ndarray) -> np.ndarray:
    events, at_risk = GRID.interval_counts(time, event)
    return stats_vector(raw, events, at_risk, SCHEMA)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40))
def test_one_patient_moves_the_statistics_by_at_most_the_sensitivity(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    raw, time, event = _patients(rng, n + 1)
    layout = StatsLayout.for_schema(SCHEMA, GRID.n_intervals)
    with_all = _release(raw, time, event)
    without = _release(raw[1:], time[1:], event[1:])
    assert with_all.shape == (layout.length,)
    assert np.linalg.norm(with_all - without) <= layout.sensitivity + 1e-9


def test_the_sensitivity_is_tight_for_a_worst_case_patient() -> None:
    """A patient at every upper bound, in every categorical's last level, with an event in the
    last interval reaches the bound: the layout does not over-noise by accident either."""
    layout = StatsLayout.for_schema(SCHEMA, GRID.n_intervals)
    low, high = encoded_bounds(SCHEMA)
    row = np.zeros((1, low.size))
    index = 0
    for feature in SCHEMA.features:
        width = len(feature.encoded_names())
        if feature.kind == "numeric":
            row[0, index] = high[index]
            if width == 2:
                row[0, index + 1] = 1.0
        else:
            row[0, index + width - 1] = 1.0
        index += width
    release = _release(row, np.array([GRID.cuts[-1] - 1.0]), np.array([1]))
    assert np.linalg.norm(release) == pytest.approx(layout.sensitivity, rel=1e-9)


def test_decode_recovers_noiseless_moments_and_counts() -> None:
    rng = np.random.default_rng(3)
    raw, time, event = _patients(rng, 5000)
    stats = decode_stats(_release(raw, time, event), SCHEMA, GRID.n_intervals)
    assert stats.count == 5000
    np.testing.assert_allclose(stats.standardization.means, raw.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(stats.standardization.stds, raw.std(axis=0), rtol=1e-6)
    events, at_risk = GRID.interval_counts(time, event)
    np.testing.assert_allclose(stats.events, events)
    np.testing.assert_allclose(stats.at_risk, at_risk, rtol=1e-9)


def test_a_variance_drowned_in_noise_falls_back_to_a_public_floor() -> None:
    """Lab values that use 3% of their declared range: the noisy estimate is not trusted, and the
    scale is range/30 rather than whatever the noise made of it (possibly near zero)."""
    rng = np.random.default_rng(4)
    raw, time, event = _patients(rng, 2000)
    kappa = SCHEMA.encoded_names().index("kappa")
    low, high = encoded_bounds(SCHEMA)
    raw[:, kappa] = rng.normal(1.5, 0.3, raw.shape[0]).clip(low[kappa], high[kappa])
    layout = StatsLayout.for_schema(SCHEMA, GRID.n_intervals)
    noisy = _release(raw, time, event) + rng.normal(0, 8 * layout.sensitivity, layout.length)
    stats = decode_stats(noisy, SCHEMA, GRID.n_intervals, noise_std=8 * layout.sensitivity)
    floor = (high[kappa] - low[kappa]) * np.sqrt(MIN_NUMERIC_VARIANCE)
    assert stats.standardization.stds[kappa] == pytest.approx(floor)


def test_centring_halves_the_noise_on_means_and_quarters_it_on_second_moments() -> None:
    """A numeric column is released as 2(u − ½) and 4(u − ½)²: noise N on its sum moves the decoded
    mean by N/(2n) of the range, noise N on its square moves the variance by N/(4n) of range²."""
    rng = np.random.default_rng(5)
    raw, time, event = _patients(rng, 4000)
    age = SCHEMA.encoded_names().index("age")
    low, high = encoded_bounds(SCHEMA)
    span = high[age] - low[age]
    layout = StatsLayout.for_schema(SCHEMA, GRID.n_intervals)
    clean = _release(raw, time, event)
    base = decode_stats(clean, SCHEMA, GRID.n_intervals).standardization
    noise = 40.0
    on_sum = clean.copy()
    on_sum[1 + age] += noise
    moved = decode_stats(on_sum, SCHEMA, GRID.n_intervals).standardization
    assert moved.means[age] - base.means[age] == pytest.approx(noise / (2 * 4000) * span)
    on_square = clean.copy()
    on_square[1 + layout.n_columns + layout.numeric_columns.index(age)] += noise
    moved = decode_stats(on_square, SCHEMA, GRID.n_intervals).standardization
    variance_change = moved.stds[age] ** 2 - base.stds[age] ** 2
    assert variance_change == pytest.approx(noise / (4 * 4000) * span**2)


def test_a_rare_level_whose_noisy_share_is_near_zero_keeps_a_sane_scale() -> None:
    """A dummy column whose noised share came out ≈ 0 would get a near-zero scale and multiply
    that level by hundreds; its share is kept one noise std (per patient) away from 0 instead."""
    rng = np.random.default_rng(6)
    raw, time, event = _patients(rng, 3000)
    rare = SCHEMA.encoded_names().index("sample.yr=2003")
    raw[:, rare] = 0.0
    raw[:3, rare] = 1.0
    noise_std = 8 * StatsLayout.for_schema(SCHEMA, GRID.n_intervals).sensitivity
    total = _release(raw, time, event)
    total[1 + rare] = 0.5  # what the noise left of the level's three patients
    stats = decode_stats(total, SCHEMA, GRID.n_intervals, noise_std=noise_std)
    p_floor = noise_std / 3000
    assert stats.standardization.stds[rare] == pytest.approx(np.sqrt(p_floor * (1 - p_floor)))
    exact = decode_stats(total, SCHEMA, GRID.n_intervals).standardization.stds[rare]
    assert exact < 0.02  # without the floor: a scale that multiplies the level by > 50


def test_decode_refuses_a_vector_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="statistics vector has shape"):
        decode_stats(np.zeros(3), SCHEMA, GRID.n_intervals)


def test_weighted_metrics_release_has_unit_sensitivity_and_decodes_exactly() -> None:
    from federation.releases import MetricsLayout

    layout = MetricsLayout()
    worst = np.asarray(layout.raw_sensitivity)  # one patient's largest move of each coordinate
    assert np.linalg.norm(layout.encode(worst)) == pytest.approx(layout.sensitivity)
    assert layout.sensitivity <= 1.0
    values = np.array([400.0, 90.0, 12.5, 700.0, 880.0, 85.0, 21.0])
    np.testing.assert_allclose(layout.decode(layout.encode(values)), values)
    layout.quantization(64)  # a configuration that cannot wrap (refused at construction if so)
