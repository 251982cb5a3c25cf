"""The calibrated metrics σ (`federation/metrics_noise.py`): its privacy claim, as a property.

Whatever the plan's ε, δ, share and number of evaluations, the k metrics releases at the
calibrated σ compose (exactly: k Gaussian releases are one at σ/√k) to at most the share of ε,
so the held-out patients' ε never exceeds what the plan says the evaluations may spend."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.gaussian import gaussian_epsilon
from federation.metrics_noise import (
    MIN_METRICS_SIGMA,
    calibrated_metrics_sigma,
    planned_evaluations,
)

pytestmark = pytest.mark.unit


@settings(max_examples=60, deadline=None)
@given(
    epsilon=st.floats(0.1, 20.0),
    delta=st.sampled_from([1e-4, 1e-5, 1e-6, 1e-8]),
    share=st.floats(0.05, 0.95),
    k=st.integers(1, 50),
)
def test_k_releases_at_the_calibrated_sigma_spend_at_most_the_share(
    epsilon: float, delta: float, share: float, k: int
) -> None:
    sigma = calibrated_metrics_sigma(epsilon, delta, share, k)
    assert sigma >= MIN_METRICS_SIGMA
    composed = gaussian_epsilon(sigma / math.sqrt(k), delta)
    assert composed <= share * epsilon * (1 + 1e-6)
    if sigma > MIN_METRICS_SIGMA:  # not wastefully large: within the 1e-3 rounding (and the
        # calibration's 1e-6 relative tolerance)
        smaller = (sigma - 1.01e-3) * (1 - 1e-5) / math.sqrt(k)
        assert gaussian_epsilon(smaller, delta) > share * epsilon


@given(rounds=st.integers(1, 300), every=st.integers(0, 300))
def test_planned_evaluations_counts_the_engines_rule(rounds: int, every: int) -> None:
    evaluated = [r for r in range(1, rounds + 1) if (every > 0 and r % every == 0) or r == rounds]
    assert planned_evaluations(rounds, every) == len(evaluated)


def test_impossible_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="share"):
        calibrated_metrics_sigma(3.0, 1e-5, 1.0, 1)
    with pytest.raises(ValueError, match="evaluations"):
        calibrated_metrics_sigma(3.0, 1e-5, 0.5, 0)
