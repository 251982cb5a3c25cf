"""`survival.kaplan_meier` against known truth: simulated cohorts on a grid, Gaussian noise of
known std on their totals (as the statistics release adds), and the band's coverage of the true
curve counted over many draws."""

from __future__ import annotations

import math

import numpy as np
import pytest

from survival.kaplan_meier import kaplan_meier, normal_quantile

pytestmark = pytest.mark.unit

CUTS = np.arange(1.0, 11.0)  # K = 10 unit intervals
RATE = 0.08  # exponential hazard: S(t) = exp(−0.08 t)
TRUE_S = np.exp(-RATE * CUTS)


def _cohort(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-interval events and at-risk totals of n patients, censored only at cut points so that
    d_k / n_k is unbiased for the discrete hazard and S(c_k) is the true curve."""
    event_time = rng.exponential(1.0 / RATE, n)
    censor_cut = rng.integers(3, 12, n).astype(float)  # administrative censoring at a cut
    k = len(CUTS)
    events = np.zeros(k)
    at_risk = np.zeros(k)
    for j, cut in enumerate(CUTS):
        start = cut - 1.0
        risk = (event_time > start) & (censor_cut > start)
        at_risk[j] = risk.sum()
        events[j] = (risk & (event_time <= cut)).sum()
    return events, at_risk


def _coverage(noise_d: float, noise_n: float, model_noise: bool, reps: int = 300) -> np.ndarray:
    rng = np.random.default_rng(7)
    hits = np.zeros(len(CUTS))
    for _ in range(reps):
        events, at_risk = _cohort(rng, 1500)
        noised_d = events + rng.normal(0.0, noise_d, events.shape)
        noised_n = at_risk + rng.normal(0.0, noise_n, at_risk.shape)
        km = kaplan_meier(
            noised_d,
            noised_n,
            events_noise_std=noise_d if model_noise else 0.0,
            at_risk_noise_std=noise_n if model_noise else 0.0,
        )
        hits += (km.lower <= TRUE_S) & (km.upper >= TRUE_S)
    return hits / reps


def test_exact_counts_give_the_product_limit_and_greenwood() -> None:
    d = np.array([10.0, 5.0, 0.0, 8.0])
    n = np.array([100.0, 90.0, 80.0, 70.0])
    km = kaplan_meier(d, n)
    expected = np.cumprod(1 - d / n)
    np.testing.assert_allclose(km.survival, expected)
    greenwood = np.cumsum(d / (n * (n - d)))
    np.testing.assert_allclose(km.var_sampling, greenwood)
    assert np.all(km.var_noise == 0)
    assert np.all((km.lower <= km.survival) & (km.survival <= km.upper))


def test_the_band_covers_the_true_curve_at_its_level_under_known_noise() -> None:
    # noise comparable to the sampling error: σ_d = 15 events, σ_n = 15·√10 at risk
    coverage = _coverage(15.0, 15.0 * math.sqrt(10), model_noise=True)
    assert np.all(coverage > 0.88), coverage
    assert np.all(coverage < 0.995), coverage


def test_greenwood_alone_undercovers_when_the_noise_is_large() -> None:
    # the reason the noise term exists: ignoring it, the band misses the truth far too often
    coverage = _coverage(15.0, 15.0 * math.sqrt(10), model_noise=False)
    assert coverage.mean() < 0.85, coverage


def test_noise_widens_the_band_and_is_reported_as_its_share() -> None:
    d = np.array([30.0, 25.0, 20.0])
    n = np.array([1000.0, 900.0, 800.0])
    plain = kaplan_meier(d, n)
    noisy = kaplan_meier(d, n, events_noise_std=20.0, at_risk_noise_std=60.0)
    assert np.all(noisy.upper - noisy.lower > plain.upper - plain.lower)
    assert np.all((noisy.noise_share > 0.5) & (noisy.noise_share < 1))
    assert np.all(plain.noise_share == 0)


def test_noised_counts_outside_their_range_stay_a_survival_curve() -> None:
    km = kaplan_meier(
        np.array([-3.0, 12.0, 50.0]),
        np.array([40.0, 10.0, 30.0]),
        events_noise_std=5.0,
        at_risk_noise_std=5.0,
    )
    assert np.all((km.survival >= 0) & (km.survival <= 1))
    assert np.all(np.diff(km.survival) <= 0)
    assert np.all((km.lower >= 0) & (km.upper <= 1) & (km.lower <= km.upper))


def test_normal_quantile() -> None:
    assert normal_quantile(0.975) == pytest.approx(1.959964, abs=1e-5)
    assert normal_quantile(0.5) == pytest.approx(0.0, abs=1e-9)
