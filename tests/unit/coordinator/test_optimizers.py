"""Server optimisers against hand computations (Reddi et al. 2021, Algorithm 2, with Adam's bias
correction), and FedAvg against the exact float operations the coordinator has always used."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coordinator.optimizers import FedAdam, FedAvg, FedYogi, server_optimizer
from federation.plan import PlanError, parse_plan
from federation.plan_training import TrainingPlan

pytestmark = pytest.mark.unit

W0 = np.array([0.0, 0.0], dtype=np.float32)
G1 = np.array([0.5, -2.0])
G2 = np.array([0.5, 1.0])


def test_fedavg_adds_the_scaled_mean_update() -> None:
    step = FedAvg(learning_rate=0.5).step(np.array([1.0, 2.0], dtype=np.float32), G1)
    np.testing.assert_array_equal(step, np.array([1.25, 1.0], dtype=np.float32))
    assert step.dtype == np.float32


def test_fedavg_is_bit_identical_to_the_old_update() -> None:
    """The demo runs FedAvg: its models must not move by one ulp across the refactor."""
    rng = np.random.default_rng(7)
    weights = rng.normal(0, 3, 10_000).astype(np.float32)
    delta = rng.normal(0, 0.05, 10_000)
    old = weights.astype(np.float64)
    old += 0.7 * delta
    np.testing.assert_array_equal(FedAvg(0.7).step(weights, delta), old.astype(np.float32))


def test_fedadam_first_two_steps_by_hand() -> None:
    adam = FedAdam(learning_rate=1.0, beta1=0.9, beta2=0.99, tau=1e-3)
    # t = 1: m = 0.1 g, v = 0.01 g², so m̂ = g and v̂ = g²: the step is g / (|g| + τ)
    w1 = adam.step(W0, G1)
    np.testing.assert_allclose(w1, [0.5 / 0.501, -2.0 / 2.001], rtol=1e-6)
    np.testing.assert_allclose(adam.m, [0.05, -0.2], rtol=1e-6)
    np.testing.assert_allclose(adam.v, [0.0025, 0.04], rtol=1e-6)
    # t = 2: m = [0.045 + 0.05, −0.18 + 0.1], v = [0.002475 + 0.0025, 0.0396 + 0.01]
    w2 = adam.step(w1, G2)
    m = np.array([0.095, -0.08])
    v = np.array([0.004975, 0.0496])
    m_hat, v_hat = m / (1 - 0.9**2), v / (1 - 0.99**2)
    assert m_hat[0] == pytest.approx(0.5) and v_hat[0] == pytest.approx(0.25)
    np.testing.assert_allclose(w2, w1 + m_hat / (np.sqrt(v_hat) + 1e-3), rtol=1e-6)
    assert adam.steps == 2


def test_fedyogi_first_two_steps_by_hand() -> None:
    yogi = FedYogi(learning_rate=1.0, beta1=0.9, beta2=0.99, tau=1e-3)
    # t = 1 from v = τ² = 1e-6: v < g², so v grows by 0.01 g² (as Adam's would, plus τ²)
    w1 = yogi.step(W0, G1)
    v1 = np.array([1e-6 + 0.0025, 1e-6 + 0.04])
    np.testing.assert_allclose(yogi.v, v1, rtol=1e-6)
    np.testing.assert_allclose(w1, G1 / (np.sqrt(v1 / 0.01) + 1e-3), rtol=1e-6)  # m̂ = g at t = 1
    # t = 2 with a small update: v > g² in coordinate 0, so v *shrinks* by 0.01 g², additively
    # (Adam would multiply it by 0.99); a zero coordinate leaves v as it was
    g2 = np.array([0.01, 0.0])
    w2 = yogi.step(w1, g2)
    v2 = np.array([v1[0] - 0.01 * 0.0001, v1[1]])
    np.testing.assert_allclose(yogi.v, v2, rtol=1e-6)
    m2 = 0.9 * 0.1 * G1 + 0.1 * g2
    expected = w1 + (m2 / (1 - 0.81)) / (np.sqrt(v2 / (1 - 0.99**2)) + 1e-3)
    np.testing.assert_allclose(w2, expected, rtol=1e-6)


def test_bias_correction_makes_the_early_steps_no_larger_than_the_rate() -> None:
    """A constant pseudo-gradient: with the correction every step is η·g/(|g| + τ) ≈ η; without
    it they would grow to (1 − β1ᵗ)/√(1 − β2ᵗ) ≈ 2η by round 10."""
    adam = FedAdam(learning_rate=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    weights = np.zeros(1, dtype=np.float32)
    for _ in range(10):
        after = adam.step(weights, np.array([0.3]))
        assert float(after[0] - weights[0]) == pytest.approx(0.1 * 0.3 / 0.301, rel=1e-5)
        weights = after
    assert (1 - 0.9**10) / math.sqrt(1 - 0.99**10) > 2.0


@pytest.mark.parametrize("kind", [FedAdam, FedYogi])
def test_state_round_trips_through_load(kind: type[FedAdam] | type[FedYogi]) -> None:
    first = kind(learning_rate=0.5, beta1=0.8, beta2=0.95, tau=1e-2)
    w = first.step(W0, G1)
    second = kind(learning_rate=0.5, beta1=0.8, beta2=0.95, tau=1e-2)
    second.load(first.steps, first.state())
    np.testing.assert_array_equal(first.step(w, G2), second.step(w, G2))
    assert set(first.state()) == set(kind.names)


def test_the_plan_chooses_the_optimiser_and_its_parameters() -> None:
    assert isinstance(server_optimizer(TrainingPlan()), FedAvg)
    training = TrainingPlan(
        server_optimizer="fedyogi", server_beta1=0.5, server_beta2=0.9, server_tau=0.01
    )
    yogi = server_optimizer(training)
    assert isinstance(yogi, FedYogi)
    assert (yogi.beta1, yogi.beta2, yogi.tau) == (0.5, 0.9, 0.01)
    adam = server_optimizer(TrainingPlan(server_optimizer="fedadam"))
    assert isinstance(adam, FedAdam)
    assert (adam.beta1, adam.beta2, adam.tau) == (0.9, 0.99, 1e-3)  # the defaults


def test_a_plan_with_a_beta_of_one_is_refused_naming_the_field() -> None:
    text = """
name = "x"
[[features]]
kind = "numeric"
name = "age"
min = 0
max = 1
[time_grid]
cuts = [1.0]
[training]
server_optimizer = "fedadam"
server_beta2 = 1.0
"""
    with pytest.raises(PlanError, match=r"training\.server_beta2"):
        parse_plan(text)
