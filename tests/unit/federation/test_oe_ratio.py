"""Calibration in the large, observed / expected events (`oe_ratio`): the site's sums measure it
(≈ 1 for the true model, far from 1 for a mis-scaled one), its interval covers as often as it
claims under the sites' noise model and the Poisson error of O, and a gap between subgroup
levels is flagged by the same rule as C's and IBS's."""

from __future__ import annotations

import math

import numpy as np
import pytest

from federation.metric_intervals import RESOLVABLE_HALF_WIDTH, Z95, metrics_with_uncertainty
from federation.releases import MetricsLayout, metrics_from_sums
from federation.subgroup_metrics import subgroup_gaps
from site_agent.releases import calibration_sums, consortium_censoring, metrics_vector
from survival.timegrid import TimeGrid

pytestmark = pytest.mark.unit

LAYOUT = MetricsLayout()
GRID = TimeGrid.equal_width(10.0, 10)
CENSORING = consortium_censoring(GRID, np.full(10, 50.0), np.linspace(5000.0, 2000.0, 10))
DRAWS = 2000


def simulate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A cohort drawn from a known discrete-time model: per-interval hazard
    h_ij = 1 − exp(−0.06·exp(0.7·x_i)), x ~ N(0, 1); an event falls uniformly inside its
    interval, censoring at a cut (at risk through its interval, the grid's convention), and a
    patient surviving the grid is followed past the horizon, where half of them have an event
    that the model cannot see (O counts events up to the horizon only).

    Returns (time, event, the true hazards n × K)."""
    rng = np.random.default_rng(seed)
    k = GRID.n_intervals
    x = rng.normal(size=n)
    hazard = np.repeat((1.0 - np.exp(-0.06 * np.exp(0.7 * x)))[:, None], k, axis=1)
    cuts = np.asarray(GRID.cuts)
    starts = np.concatenate([[0.0], cuts[:-1]])
    event_interval = np.full(n, k)  # k: no event on the grid
    for j in range(k):
        undecided = event_interval == k
        event_interval[undecided & (rng.random(n) < hazard[:, j])] = j
    censor_interval = rng.integers(0, 2 * k, n)  # ≥ k: never censored on the grid
    time = np.empty(n)
    event = np.zeros(n, dtype=np.int64)
    for i in range(n):
        e, c = event_interval[i], censor_interval[i]
        if e < k and e <= c:
            time[i] = rng.uniform(starts[e], cuts[e])
            event[i] = 1
        elif c < k:
            time[i] = cuts[c]
        else:  # beyond the horizon
            time[i] = cuts[-1] + rng.uniform(0.5, 5.0)
            event[i] = int(rng.random() < 0.5)
    return time, event, hazard


def observed_over_expected(time: np.ndarray, event: np.ndarray, hazard: np.ndarray) -> float:
    """The site's metrics sums of a model with these hazards, decoded as the coordinator does."""
    surv = np.cumprod(1.0 - hazard, axis=1)
    risk = hazard.sum(axis=1)
    sums = metrics_vector(time, event, risk, surv, GRID, CENSORING, LAYOUT, b"site|run")
    return metrics_from_sums(sums, LAYOUT)["oe_ratio"]


def test_the_true_model_has_oe_near_one_and_a_mis_scaled_one_does_not() -> None:
    time, event, hazard = simulate(20_000, seed=1)
    assert event[time > GRID.horizon].sum() > 100  # events past the horizon, not counted in O
    calibrated = observed_over_expected(time, event, hazard)
    # Poisson error of O ≈ 1/√O ≈ 0.013 with ~6 000 events: 0.05 is ~4 SE
    assert abs(calibrated - 1.0) < 0.05
    assert observed_over_expected(time, event, np.clip(2.0 * hazard, 0, 1)) < 0.6  # too many
    assert observed_over_expected(time, event, 0.5 * hazard) > 1.7  # too few predicted


def test_control_counting_events_past_the_horizon_breaks_calibration() -> None:
    """O must stop where H stops: the same true model with every event counted reads as
    predicting too few events."""
    time, event, hazard = simulate(20_000, seed=2)
    observed, expected = calibration_sums(time, event, np.cumprod(1 - hazard, 1), GRID, LAYOUT)
    all_events = float(event.sum()) / (expected * LAYOUT.expected_cap)
    assert all_events > 1.1
    assert abs(observed / (expected * LAYOUT.expected_cap) - 1.0) < 0.05


def test_one_patient_moves_observed_and_expected_by_at_most_one() -> None:
    """The cap bounds the expected term: a patient with a cumulative hazard far beyond it."""
    time = np.array([9.5])
    surv = 0.1 ** np.arange(1.0, GRID.n_intervals + 1)[None, :]  # h = 0.9 a step: H = 9 > cap
    observed, expected = calibration_sums(time, np.array([1]), surv, GRID, LAYOUT)
    assert observed == 1.0 and expected == 1.0


def sums_for(observed: float, expected: float) -> np.ndarray:
    """Metric sums whose only calibration content is (O, E); the rest is a plausible
    consortium (the O/E figures do not depend on it)."""
    return np.array(
        [4 * observed, observed, 0.1 * observed, 6.2 * observed, 10 * observed, observed, 0.0]
    ) + np.array([0, 0, 0, 0, 0, 0, expected / LAYOUT.expected_cap])


def noisy(truth: np.ndarray, sigma: float, n_sites: int, rng: np.random.Generator) -> np.ndarray:
    """The decoded sum of n sites' releases of `truth` (split evenly), as the coordinator sees."""
    weighted = np.zeros(LAYOUT.length)
    for _ in range(n_sites):
        weighted += LAYOUT.encode(truth / n_sites)
        weighted += rng.normal(0.0, sigma * LAYOUT.sensitivity, LAYOUT.length)
    decoded: np.ndarray = LAYOUT.decode(weighted)
    return decoded


# (expected events, true O/E, σ): a consortium, a subgroup level, a mis-calibrated level
SETTINGS = [(800.0, 1.0, 1.0), (200.0, 0.8, 0.5), (300.0, 1.3, 0.7)]


@pytest.mark.parametrize(("expected", "ratio", "sigma"), SETTINGS)
def test_oe_intervals_cover_the_population_ratio(
    expected: float, ratio: float, sigma: float
) -> None:
    """Each draw samples O ~ Poisson(ratio·E) (E the model's, fixed), splits it over 3 sites and
    noises it; the interval with the Poisson term covers the population ratio ~95 % of the time,
    the noise-only interval the sample's own noise-free O/E."""
    rng = np.random.default_rng(int(expected))
    n_sites, noise = 3, sigma * LAYOUT.sensitivity * math.sqrt(3)
    population, sample_hits, resolvable = [], [], []
    for _ in range(DRAWS):
        observed = float(rng.poisson(ratio * expected))
        sums = noisy(sums_for(observed, expected), sigma, n_sites, rng)
        out = metrics_with_uncertainty(sums, LAYOUT, noise)
        population.append(out["oe_ratio_lo"] <= ratio <= out["oe_ratio_hi"])
        resolvable.append(out["oe_ratio_resolvable"] == 1.0)
        alone = metrics_with_uncertainty(sums, LAYOUT, noise, sampling=False)
        sample_hits.append(alone["oe_ratio_lo"] <= observed / expected <= alone["oe_ratio_hi"])
    rate, sample_rate = np.mean(population), np.mean(sample_hits)
    print("O/E coverage", expected, ratio, sigma, rate, sample_rate, np.mean(resolvable))
    assert np.mean(resolvable) > 0.9  # the settings are meant to be resolvable
    assert 0.92 <= rate <= 0.98
    assert 0.92 <= sample_rate <= 0.98


def test_without_the_poisson_term_population_coverage_falls_short() -> None:
    """The Poisson term is not decoration: at a level with 200 expected events and little
    noise, the noise-only interval misses the population ratio far more often than 5 %."""
    rng = np.random.default_rng(9)
    expected, ratio, sigma = 200.0, 1.0, 0.3
    noise = sigma * LAYOUT.sensitivity * math.sqrt(3)
    hits = []
    for _ in range(500):
        sums = noisy(sums_for(float(rng.poisson(ratio * expected)), expected), sigma, 3, rng)
        out = metrics_with_uncertainty(sums, LAYOUT, noise, sampling=False)
        hits.append(out["oe_ratio_lo"] <= ratio <= out["oe_ratio_hi"])
    assert np.mean(hits) < 0.85


def test_a_drowned_ratio_is_not_resolvable_and_its_interval_is_not_clipped_at_one() -> None:
    rng = np.random.default_rng(4)
    noise = 20.0 * LAYOUT.sensitivity * math.sqrt(3)  # σ = 20 over 3 sites, 100 expected events
    out = metrics_with_uncertainty(noisy(sums_for(100, 100), 20.0, 3, rng), LAYOUT, noise)
    assert out.get("oe_ratio_resolvable", 0.0) == 0.0
    precise = metrics_with_uncertainty(sums_for(1300.0, 1000.0), LAYOUT, 0.5)
    assert precise["oe_ratio"] == pytest.approx(1.3)
    assert precise["oe_ratio_lo"] < 1.3 < precise["oe_ratio_hi"]
    assert Z95 * precise["oe_ratio_se"] < RESOLVABLE_HALF_WIDTH["oe_ratio"]


def level(name: str, oe: float, se: float, resolvable: bool) -> dict[str, float]:
    prefix = f"subgroup:age={name}:"
    return {
        prefix + "oe_ratio": oe,
        prefix + "oe_ratio_se": se,
        prefix + "oe_ratio_resolvable": float(resolvable),
    }


def test_an_oe_gap_is_flagged_only_when_both_levels_resolve_and_it_exceeds_its_se() -> None:
    def gap(a: dict[str, float], b: dict[str, float]) -> dict[str, object]:
        (only,) = [g for g in subgroup_gaps({**a, **b}) if g["metric"] == "oe_ratio"]
        return only

    young, old = level("young", 0.8, 0.05, True), level("old", 1.3, 0.08, True)
    flagged = gap(young, old)
    assert flagged["flagged"] and flagged["highest"] == "old"
    assert flagged["se"] == pytest.approx(math.hypot(0.05, 0.08))
    assert not gap(young, level("old", 0.9, 0.08, True))["flagged"]  # 0.1 < 1.96·0.094
    assert not gap(young, level("old", 1.3, 0.08, False))["flagged"]  # not resolvable
