"""decode_metrics_sum: the coordinator's figures carry their uncertainty from the public σ."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coordinator import aggregation
from federation.metric_intervals import Z95
from federation.plan import RunPlan, parse_plan
from federation.releases import MAX_SITES, MetricsLayout
from secagg.quantize import quantize
from tests.unit.coordinator.test_engine import PLAN

pytestmark = pytest.mark.unit

LAYOUT = MetricsLayout()


def _plan(sigma: float) -> RunPlan:
    text = PLAN.format(rounds=2, attempts=3)
    return parse_plan(text + f"\n[privacy]\nmetrics_noise_multiplier = {sigma}\n")


def _site_release(values: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """What a local-mode site caches for the session (site_agent/handlers.py, evaluate)."""
    noised = LAYOUT.encode(values) + rng.normal(0.0, sigma * LAYOUT.sensitivity, LAYOUT.length)
    released: np.ndarray = quantize(noised, LAYOUT.quantization(MAX_SITES))
    return released


def _total(releases: list[np.ndarray]) -> np.ndarray:
    total = np.zeros(LAYOUT.length, dtype=np.uint32)
    for release in releases:
        total += release  # modulo 2^32, as the secure sum
    return total


# ibs 0.187, c_windowed 0.62, oe_ratio 380 / (4·100) = 0.95 per site
SITE = np.array([1500.0, 400.0, 70.0, 2480.0, 4000.0, 380.0, 100.0])


def test_decode_metrics_sum_returns_intervals_from_the_public_noise() -> None:
    sigma, n = 5.0, 3
    plan = _plan(sigma)
    rng = np.random.default_rng(1)
    total = _total([_site_release(SITE, sigma, rng) for _ in range(n)])
    metrics = aggregation.decode_metrics_sum(plan, total, n)
    for name in ("patients", "events", "observed", "expected", "ibs", "c_windowed", "oe_ratio"):
        for suffix in ("", "_se", "_lo", "_hi", "_resolvable"):
            assert isinstance(metrics[name + suffix], float), name + suffix
        assert metrics[f"{name}_lo"] <= metrics[name] <= metrics[f"{name}_hi"]
    noise = sigma * LAYOUT.sensitivity * math.sqrt(n)
    assert aggregation.metrics_noise_std(plan, n) == pytest.approx(noise)
    assert metrics["events_se"] == pytest.approx(noise / LAYOUT.weights[1])
    assert metrics["c_windowed_resolvable"] == 1.0  # se ≈ 0.03 at σ = 5 with 12 000 pairs
    assert Z95 * metrics["c_windowed_se"] < 0.25


def test_fewer_survivors_mean_less_noise_in_the_interval() -> None:
    sigma = 5.0
    plan = _plan(sigma)
    rng = np.random.default_rng(2)
    total = _total([_site_release(SITE, sigma, rng) for _ in range(2)])
    all_in = aggregation.decode_metrics_sum(plan, total, 3, 3)
    survivors = aggregation.decode_metrics_sum(plan, total, 3, 2)
    assert survivors["events_se"] == pytest.approx(all_in["events_se"] * math.sqrt(2 / 3))
    assert survivors["c_windowed"] == all_in["c_windowed"]


def test_the_default_sigma_flags_a_small_consortium() -> None:
    """σ = 20, 3 sites of 100 events: what printed c_windowed 0.46, 0.27, 0.53 … is flagged."""
    plan = _plan(20.0)
    rng = np.random.default_rng(3)
    small = np.array([500.0, 100.0, 23.0, 790.0, 1000.0, 100.0, 25.0])
    for _ in range(50):
        total = _total([_site_release(small, 20.0, rng) for _ in range(3)])
        metrics = aggregation.decode_metrics_sum(plan, total, 3)
        assert metrics.get("c_windowed_resolvable", 0.0) == 0.0
        assert metrics["events"] >= 0.0


def test_coordinator_intervals_cover_the_truth() -> None:
    """Through quantisation and the modular sum: the 95 % noise intervals still cover."""
    sigma, n, draws = 10.0, 3, 400
    plan = _plan(sigma)
    rng = np.random.default_rng(4)
    truth_c = 3 * SITE[3] / (3 * SITE[4])
    hits = 0
    for _ in range(draws):
        total = _total([_site_release(SITE, sigma, rng) for _ in range(n)])
        metrics = aggregation.decode_metrics_sum(plan, total, n)
        hits += metrics["c_windowed_lo"] <= truth_c <= metrics["c_windowed_hi"]
    assert 0.9 <= hits / draws <= 0.99
