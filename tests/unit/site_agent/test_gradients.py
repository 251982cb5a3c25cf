"""Per-patient clipped gradient sums: equal to a plain per-row loop, clipped row by row, in the
flat parameter order, fast enough to run every round; and the Poisson batch sampler."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import site_agent.gradients as gradients
from site_agent.gradients import (
    clip_rows,
    clipped_gradient_sum,
    per_patient_gradients,
    poisson_batch,
)
from survival.loss import nll_per_patient
from survival.models import DiscreteHazardModel, ModelSpec, build_model, flat_parameters
from survival.spec import parameter_count

pytestmark = pytest.mark.unit

P, K = 6, 7
SPECS = {
    "default": ModelSpec(),
    "linear": ModelSpec(kind="linear"),
    "mlp": ModelSpec(kind="mlp", hidden=(16, 8)),
}


@pytest.fixture(autouse=True)
def _vmap_must_not_fall_back() -> Iterator[None]:
    """The vectorised path must handle both model kinds: a fallback warning fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


def make_model(
    spec: ModelSpec, seed: int = 0, dtype: torch.dtype = torch.float64
) -> DiscreteHazardModel:
    torch.manual_seed(seed)
    model = build_model(spec, P, K).to(dtype)
    with torch.no_grad():
        for p in model.parameters():  # away from the zero start, so every gradient is non-trivial
            p.normal_(0.0, 0.5)
    return model


def make_batch(rows: int, seed: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, P, generator=g, dtype=torch.float64) * 2.0
    interval = torch.randint(0, K, (rows,), generator=g)
    event = torch.randint(0, 2, (rows,), generator=g)
    return x, interval, event


def reference_rows(model: nn.Module, x: Tensor, interval: Tensor, event: Tensor) -> np.ndarray:
    """Plain autograd, one row at a time, flattened in `model.parameters()` order."""
    out = []
    for i in range(x.shape[0]):
        loss = nll_per_patient(model(x[i : i + 1]), interval[i : i + 1], event[i : i + 1]).sum()
        grads = torch.autograd.grad(loss, list(model.parameters()))
        out.append(torch.cat([g.reshape(-1) for g in grads]).double().numpy())
    result: np.ndarray = np.stack(out)
    return result


def manual_clip(rows: np.ndarray, c: float) -> np.ndarray:
    norms = np.sqrt((rows**2).sum(axis=1))
    clipped: np.ndarray = rows * np.minimum(1.0, c / np.maximum(norms, 1e-300))[:, None]
    return clipped


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("max_grad_norm", [0.05, 1.0, 1e6])
def test_equals_a_per_row_loop_with_manual_clipping(name: str, max_grad_norm: float) -> None:
    model = make_model(SPECS[name])
    x, interval, event = make_batch(37)
    total, count = clipped_gradient_sum(model, x, interval, event, max_grad_norm)
    expected = manual_clip(reference_rows(model, x, interval, event), max_grad_norm).sum(axis=0)
    assert count == 37
    assert total.dtype == np.float64
    assert total.shape == (parameter_count(SPECS[name], P, K),)
    np.testing.assert_allclose(total, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", SPECS)
def test_float32_model(name: str) -> None:
    model = make_model(SPECS[name], dtype=torch.float32)
    x, interval, event = make_batch(25)  # float64 input is cast to the model's dtype
    rows = per_patient_gradients(model, x, interval, event)
    expected = reference_rows(model, x.float(), interval, event)
    np.testing.assert_allclose(rows.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_order_is_flat_parameters_order() -> None:
    """The gradient of the summed loss, in the layout `flat_parameters` uses, is the unclipped
    sum; checked against a directional derivative along the flat vector."""
    model = make_model(SPECS["default"])
    x, interval, event = make_batch(20)
    total, _ = clipped_gradient_sum(model, x, interval, event, 1e9)
    flat = torch.as_tensor(flat_parameters(model), dtype=torch.float64)
    direction = torch.randn(flat.shape[0], generator=torch.Generator().manual_seed(3))

    def loss_at(vec: Tensor) -> float:
        params, offset = {}, 0
        for name, p in model.named_parameters():
            params[name] = vec[offset : offset + p.numel()].reshape(p.shape)
            offset += p.numel()
        logits = torch.func.functional_call(model, params, (x,))
        return float(nll_per_patient(logits, interval, event).sum())

    flat64 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    np.testing.assert_allclose(flat64.float().numpy(), flat.float().numpy())
    eps = 1e-6
    numeric = (loss_at(flat64 + eps * direction) - loss_at(flat64 - eps * direction)) / (2 * eps)
    assert float(np.dot(total, direction.numpy())) == pytest.approx(numeric, rel=1e-6)


@pytest.mark.parametrize("name", SPECS)
def test_each_clipped_row_is_within_the_norm(name: str) -> None:
    model = make_model(SPECS[name])
    x, interval, event = make_batch(64)
    rows = per_patient_gradients(model, x, interval, event)
    norms = torch.linalg.vector_norm(rows, dim=1)
    c = float(norms.median())  # half the rows are clipped, half are not
    clipped = clip_rows(rows, c)
    clipped_norms = torch.linalg.vector_norm(clipped, dim=1)
    assert bool(torch.all(clipped_norms <= c * (1 + 1e-12)))
    small = norms <= c
    assert bool(torch.equal(clipped[small], rows[small]))  # unclipped rows untouched
    np.testing.assert_allclose(clipped_norms[~small].numpy(), c, rtol=1e-12)
    zero = clip_rows(torch.zeros(2, 5), 1.0)
    assert bool(torch.all(zero == 0))


def test_empty_batch_gives_zeros() -> None:
    model = make_model(SPECS["default"])
    rng = np.random.default_rng(0)
    index = poisson_batch(100, 0.0, rng)
    assert index.size == 0
    x, interval, event = make_batch(100)
    total, count = clipped_gradient_sum(model, x[index], interval[index], event[index], 1.0)
    assert count == 0
    assert total.dtype == np.float64
    assert total.tolist() == [0.0] * parameter_count(SPECS["default"], P, K)


def test_dropout_uses_one_mask_per_row_in_both_passes() -> None:
    """With dropout active the vectorised gradients are those of each row's own masked forward:
    recovered from the output layer's per-row gradient G_i = g_i h_iᵀ, the hidden activations
    h_i are a dropout mask of relu(W x_i + b) (entries 0 or ×2), and the logits they give have
    ∂nll/∂logits = g_i, the gradient of the output bias."""
    spec = ModelSpec(kind="mlp", hidden=(12,), dropout=0.5)
    model = make_model(spec)
    model.train()
    x, interval, event = make_batch(40)
    rows = per_patient_gradients(model, x, interval, event)
    grads = dict(zip([n for n, _ in model.named_parameters()], _split(model, rows), strict=True))
    g = grads["output.bias"]  # [B, K]
    h = torch.einsum("bkj,bk->bj", grads["output.weight"], g) / (g * g).sum(1, keepdim=True)
    layer = model.hidden[0]
    assert isinstance(layer, nn.Linear)
    relu = torch.relu(x @ layer.weight.T + layer.bias).detach()
    kept = torch.isclose(h, 2.0 * relu, atol=1e-9)
    dropped = h.abs() < 1e-9
    assert bool(torch.all(kept | dropped))
    assert 0.3 < float((dropped & (relu > 1e-6)).sum() / (relu > 1e-6).sum()) < 0.7
    assert len({tuple(row.tolist()) for row in dropped}) > 1  # masks differ between rows
    logits = (h @ model.output.weight.T + model.output.bias + model.baseline.weight.T).detach()
    logits.requires_grad_(True)
    (expected_g,) = torch.autograd.grad(nll_per_patient(logits, interval, event).sum(), logits)
    np.testing.assert_allclose(g.numpy(), expected_g.numpy(), atol=1e-9)


def test_eval_mode_dropout_is_deterministic_and_matches_the_loop() -> None:
    model = make_model(ModelSpec(kind="mlp", hidden=(12,), dropout=0.5))
    model.eval()
    x, interval, event = make_batch(30)
    rows = per_patient_gradients(model, x, interval, event).numpy()
    np.testing.assert_allclose(rows, reference_rows(model, x, interval, event), atol=1e-9)


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_batched_linear_path_equals_vmap(name: str, mode: str) -> None:
    """Both fast paths give the per-row reference (above); here they also agree with each other
    bit for bit up to float rounding, for every model kind (dropout off: masks are random)."""
    model = make_model(SPECS[name])
    model.train(mode == "train")
    x, interval, event = make_batch(33)
    params = {n: p.detach() for n, p in model.named_parameters()}
    linear = gradients._linear_gradients(model, x, interval, event)
    assert linear is not None  # every survival model is Linear layers only
    traced = gradients._vmap_gradients(model, params, x, interval, event)
    assert list(linear) == list(traced) == list(params)
    for key in params:
        np.testing.assert_allclose(linear[key].numpy(), traced[key].numpy(), atol=1e-12)


def test_a_model_with_a_parameter_outside_a_linear_layer_uses_vmap() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = make_model(SPECS["linear"])
            self.scale = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))

        def forward(self, x: Tensor) -> Tensor:
            out: Tensor = self.inner(x) * self.scale
            return out

    model = Scaled()
    x, interval, event = make_batch(9)
    assert gradients._linear_gradients(model, x, interval, event) is None
    rows = per_patient_gradients(model, x, interval, event).numpy()
    np.testing.assert_allclose(rows, reference_rows(model, x, interval, event), atol=1e-9)


def test_a_linear_layer_applied_twice_uses_vmap() -> None:
    """The batched path reads one input per layer: a layer used twice per row must not take it."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.square = nn.Linear(P, P).double()
            self.head = nn.Linear(P, K).double()

        def forward(self, x: Tensor) -> Tensor:
            out: Tensor = self.head(torch.tanh(self.square(torch.tanh(self.square(x)))))
            return out

    torch.manual_seed(0)
    model = Twice()
    x, interval, event = make_batch(7)
    assert gradients._linear_gradients(model, x, interval, event) is None
    rows = per_patient_gradients(model, x, interval, event).numpy()
    np.testing.assert_allclose(rows, reference_rows(model, x, interval, event), atol=1e-9)


def test_falls_back_to_the_loop_when_vmap_cannot(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model(SPECS["mlp"])
    x, interval, event = make_batch(15)
    fast = per_patient_gradients(model, x, interval, event)

    def unavailable(*args: object) -> None:
        raise gradients._VmapUnavailable("pretend an unsupported layer")

    monkeypatch.setattr(gradients, "_linear_gradients", lambda *args: None)
    monkeypatch.setattr(gradients, "_vmap_gradients", unavailable)
    with pytest.warns(RuntimeWarning, match="row by row"):
        slow = per_patient_gradients(model, x, interval, event)
    np.testing.assert_allclose(slow.numpy(), fast.numpy(), atol=1e-12)


def test_bad_inputs_are_refused() -> None:
    model = make_model(SPECS["linear"])
    x, interval, event = make_batch(5)
    with pytest.raises(ValueError, match="shape"):
        per_patient_gradients(model, x, interval[:4], event)
    with pytest.raises(ValueError, match="x must be"):
        per_patient_gradients(model, x[0], interval, event)
    with pytest.raises(ValueError, match="interval indices"):
        per_patient_gradients(model, x, interval + K, event)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="max_grad_norm"):
            clipped_gradient_sum(model, x, interval, event, bad)


def test_poisson_batch() -> None:
    rng = np.random.default_rng(0)
    assert poisson_batch(10, 1.0, rng).tolist() == list(range(10))
    assert poisson_batch(0, 0.5, rng).size == 0
    sizes = [poisson_batch(1000, 0.05, rng) for _ in range(400)]
    assert all(np.all(np.diff(s) > 0) and (s.size == 0 or s[-1] < 1000) for s in sizes)
    assert np.mean([s.size for s in sizes]) == pytest.approx(50.0, abs=1.5)
    assert np.var([s.size for s in sizes]) == pytest.approx(1000 * 0.05 * 0.95, rel=0.25)
    for n, q in ((-1, 0.5), (10, -0.1), (10, 1.5), (10, float("nan")), (2.5, 0.5)):
        with pytest.raises(ValueError):
            poisson_batch(n, q, rng)  # type: ignore[arg-type]


def _split(model: nn.Module, rows: Tensor) -> list[Tensor]:
    out, offset = [], 0
    for p in model.parameters():
        out.append(rows[:, offset : offset + p.numel()].reshape(rows.shape[0], *p.shape))
        offset += p.numel()
    return out
