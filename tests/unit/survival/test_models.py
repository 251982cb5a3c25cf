"""Hazard models: Opacus accepts them, baseline init, flat parameters, coefficient recovery."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator

from survival.loss import nll_per_patient, survival_curve
from survival.models import (
    ModelSpec,
    build_model,
    flat_parameters,
    hazard_ratios,
    init_baseline,
    load_flat_parameters,
)
from survival.spec import initial_parameters, parameter_count, parameter_layout
from survival.timegrid import TimeGrid

pytestmark = pytest.mark.unit

SPECS = [ModelSpec(kind="linear"), ModelSpec(kind="mlp", hidden=(8, 4), dropout=0.1)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_opacus_accepts_and_computes_per_sample_grads(spec: ModelSpec) -> None:
    model = build_model(spec, 5, 3)
    # Random weights everywhere (the default start zeroes the last layer, hiding hidden grads).
    n = parameter_count(spec, 5, 3)
    load_flat_parameters(model, np.random.default_rng(1).normal(size=n).astype(np.float32))
    assert ModuleValidator.validate(model, strict=True) == []
    wrapped = GradSampleModule(model, loss_reduction="sum")
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    interval = torch.tensor([0, 1, 2, 2, 1, 0])
    event = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    nll_per_patient(wrapped(x), interval, event).sum().backward()
    for p in wrapped.parameters():
        grad_sample = p.grad_sample
        assert grad_sample is not None and grad_sample.shape == (6, *p.shape)
        assert p.grad is not None and bool((p.grad != 0).any())
        # Per-sample gradients must sum to the batch gradient.
        torch.testing.assert_close(grad_sample.sum(0), p.grad, rtol=1e-5, atol=1e-6)
    # The helpers see through the Opacus wrapper.
    assert flat_parameters(wrapped).shape == (parameter_count(spec, 5, 3),)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_layout_and_flat_round_trip(spec: ModelSpec) -> None:
    model = build_model(spec, 4, 6)
    sizes = [p.numel() for p in model.parameters()]
    assert sizes == [int(np.prod(s)) for _, s in parameter_layout(spec, 4, 6)]
    vec = np.random.default_rng(0).normal(size=sum(sizes)).astype(np.float32)
    load_flat_parameters(model, vec)
    np.testing.assert_array_equal(flat_parameters(model), vec)
    other = build_model(spec, 4, 6)
    load_flat_parameters(other, flat_parameters(model))
    x = torch.randn(3, 4)
    torch.testing.assert_close(model.eval()(x), other.eval()(x))
    with pytest.raises(ValueError, match="needs"):
        load_flat_parameters(model, vec[:-1])
    bad = vec.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        load_flat_parameters(model, bad)


def test_seeded_build_matches_coordinator_vector() -> None:
    spec = ModelSpec(kind="mlp", hidden=(16,))
    model = build_model(spec, 7, 5, seed=42)
    np.testing.assert_array_equal(flat_parameters(model), initial_parameters(spec, 7, 5, 42))
    assert not np.array_equal(
        flat_parameters(model), flat_parameters(build_model(spec, 7, 5, seed=43))
    )


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_init_baseline_reproduces_empirical_hazards(spec: ModelSpec) -> None:
    rng = np.random.default_rng(3)
    grid = TimeGrid.equal_width(10.0, 4)
    time = rng.exponential(8.0, size=20_000)
    event = rng.integers(0, 2, size=time.size)
    events, at_risk = grid.interval_counts(time, event)
    model = build_model(spec, 3, 4).eval()
    init_baseline(model, events, at_risk)
    hazards = torch.sigmoid(model(torch.randn(5, 3))).detach().numpy()
    # Every patient gets the baseline hazard (last layer starts at zero); smoothing is negligible.
    np.testing.assert_allclose(hazards, np.tile(events / at_risk, (5, 1)), atol=2e-4)
    # And survival follows the empirical discrete-time (Kaplan-Meier-like) product.
    curve = survival_curve(model(torch.zeros(1, 3))).detach().numpy()[0]
    np.testing.assert_allclose(curve, np.cumprod(1 - events / at_risk), atol=5e-4)


def test_init_baseline_tolerates_noised_counts() -> None:
    model = build_model(ModelSpec(kind="linear"), 2, 3)
    init_baseline(model, np.array([-3.0, 0.0, 50.0]), np.array([-10.0, 0.0, 20.0]))
    logits = model(torch.zeros(1, 2)).detach()
    assert torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="intervals"):
        init_baseline(model, np.ones(4), np.ones(4) * 10)


def test_hazard_ratios() -> None:
    model = build_model(ModelSpec(kind="linear"), 2, 3)
    load_flat_parameters(model, np.array([0, 0, 0, np.log(2.0), -np.log(4.0)], dtype=np.float32))
    ratios = hazard_ratios(model, ["age", "sex=M"])
    assert ratios == pytest.approx({"age": 2.0, "sex=M": 0.25})
    assert hazard_ratios(build_model(ModelSpec(kind="mlp"), 2, 3)) is None
    with pytest.raises(ValueError, match="names"):
        hazard_ratios(model, ["age"])


def test_linear_model_recovers_true_coefficients() -> None:
    """Maximum likelihood on data simulated from the model itself finds its coefficients."""
    rng = np.random.default_rng(7)
    n, k = 4000, 5
    beta = np.array([0.7, -0.5])
    alpha = np.log(np.array([0.05, 0.08, 0.1, 0.12, 0.15]) / 0.9)
    x = rng.normal(size=(n, 2))
    hazard = 1 / (1 + np.exp(-(alpha[None, :] + (x @ beta)[:, None])))
    died = rng.random((n, k)) < hazard
    first = np.where(died.any(1), died.argmax(1), k - 1)
    event = died.any(1).astype(np.float32)
    model = build_model(ModelSpec(kind="linear"), 2, k)
    xt, it, et = (
        torch.as_tensor(x, dtype=torch.float32),
        torch.as_tensor(first),
        torch.as_tensor(event),
    )
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nll_per_patient(model(xt), it, et).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    ratios = hazard_ratios(model, ["a", "b"])
    assert ratios is not None
    np.testing.assert_allclose(np.log([ratios["a"], ratios["b"]]), beta, atol=0.08)
