"""The discrete-time likelihood against hand-worked numbers and a brute-force product."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from survival.loss import nll_per_patient, risk_score, survival_curve

pytestmark = pytest.mark.unit

# Hazards h = (0.5, 0.25, 0.2) in every row: logits 0, log(1/3), log(1/4).
LOGITS = torch.tensor([[0.0, math.log(1 / 3), math.log(1 / 4)]] * 4, dtype=torch.float64)


def test_hand_computed_example() -> None:
    interval = torch.tensor([1, 1, 0, 2])
    event = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    nll = nll_per_patient(LOGITS, interval, event)
    expected = [
        -math.log(0.5 * 0.25),  # event in 1: survived 0 (0.5), died in 1 (0.25) → log 8
        -math.log(0.5 * 0.75),  # censored in 1: survived 0 and 1 (convention) → −log 0.375
        -math.log(0.5),  # event in 0: h_0 = 0.5 → log 2
        -math.log(0.5 * 0.75 * 0.8),  # censored in 2: survived all three → −log 0.3
    ]
    assert nll.tolist() == pytest.approx(expected, rel=1e-12)
    assert expected[0] == pytest.approx(math.log(8))


def _brute_force_likelihood(logits: np.ndarray, interval: np.ndarray, event: np.ndarray) -> float:
    """Π over patients of Π_{j<k}(1 − h_j) · (h_k if event else 1 − h_k), in plain floats."""
    total = 1.0
    for row, k, e in zip(logits, interval, event, strict=True):
        hazards = [1.0 / (1.0 + math.exp(-v)) for v in row]
        for j in range(k):
            total *= 1.0 - hazards[j]
        total *= hazards[k] if e else 1.0 - hazards[k]
    return total


def test_sum_matches_brute_force_product() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(-1.0, 1.0, size=(6, 5))
    interval = rng.integers(0, 5, size=6)
    event = rng.integers(0, 2, size=6).astype(float)
    nll = nll_per_patient(
        torch.as_tensor(logits), torch.as_tensor(interval), torch.as_tensor(event)
    )
    assert float(nll.sum()) == pytest.approx(
        -math.log(_brute_force_likelihood(logits, interval, event)), rel=1e-10
    )


def test_gradient_finite_for_extreme_logits() -> None:
    logits = torch.tensor(
        [[-200.0, 0.0, 200.0], [1e4, -1e4, 3.0], [-50.0, -50.0, -50.0]], requires_grad=True
    )
    nll = nll_per_patient(logits, torch.tensor([2, 1, 2]), torch.tensor([1.0, 0.0, 0.0]))
    nll.sum().backward()
    assert torch.isfinite(nll).all()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # An event where the hazard logit is +200 costs (almost) nothing for that interval, but the
    # survived interval with logit +1e4 (patient 2) costs 1e4.
    assert float(nll[1].detach()) == pytest.approx(1e4, rel=1e-6)


def test_bad_shapes_and_indices_raise() -> None:
    with pytest.raises(ValueError, match="interval indices"):
        nll_per_patient(LOGITS, torch.tensor([0, 1, 2, 3]), torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        nll_per_patient(LOGITS, torch.tensor([0, 1]), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        nll_per_patient(LOGITS[0], torch.tensor([0]), torch.zeros(1))


def test_survival_curve_monotone_in_unit_interval() -> None:
    logits = torch.randn(64, 12, generator=torch.Generator().manual_seed(0)) * 5
    curve = survival_curve(logits)
    assert curve.shape == (64, 12)
    assert ((curve >= 0) & (curve <= 1)).all()
    assert (curve[:, 1:] <= curve[:, :-1]).all()
    expected = torch.cumprod(1 - torch.sigmoid(logits), dim=1)
    assert torch.allclose(curve, expected, atol=1e-6)
    assert torch.allclose(
        survival_curve(LOGITS)[0], torch.tensor([0.5, 0.375, 0.3], dtype=torch.float64)
    )


def test_risk_score_higher_for_higher_hazards() -> None:
    logits = torch.randn(32, 8, generator=torch.Generator().manual_seed(2))
    worse = logits + torch.rand(32, 1, generator=torch.Generator().manual_seed(3)) + 0.1
    assert (risk_score(worse) > risk_score(logits)).all()
    # Equal widths give Σ_k (1 − S_k); weighted widths scale each term.
    assert float(risk_score(LOGITS)[0]) == pytest.approx(0.5 + 0.625 + 0.7)
    widths = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert float(risk_score(LOGITS, widths)[0]) == pytest.approx(0.5 + 1.25 + 2.1)
