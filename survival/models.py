"""Discrete-time hazard models built from Opacus-compatible layers only (Linear, ReLU, Dropout).

Both models output one hazard logit per interval, logit h_k(x) = alpha_k + f(x)_k:
- `linear`: f(x)_k = x·beta for every k (proportional odds of the hazard; exp(beta) are hazard-odds
  ratios, close to Cox hazard ratios when interval hazards are small).
- `mlp`: f(x) = MLP(x) with K outputs (hazards need not be proportional).

The baseline alpha is a bias-free `Linear(1, K)` applied to a column of ones rather than a bare
`nn.Parameter`, because Opacus computes per-sample gradients per supported layer and has no
sampler for a parameter owned directly by a custom module. The flat parameter order is the one
`survival.spec.parameter_layout` defines (torch-free), so the coordinator can build and update the
global vector without torch.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from survival.spec import ModelSpec, baseline_logits, initial_parameters, parameter_layout

__all__ = [
    "DiscreteHazardModel",
    "ModelSpec",
    "build_model",
    "flat_parameters",
    "hazard_ratios",
    "init_baseline",
    "load_flat_parameters",
]


class DiscreteHazardModel(nn.Module):
    """x[B, p] → hazard logits [B, K]."""

    def __init__(self, spec: ModelSpec, n_features: int, n_intervals: int) -> None:
        super().__init__()
        if n_features < 1 or n_intervals < 1:
            raise ValueError("a model needs at least one feature and one time interval")
        self.spec = spec
        self.n_features = n_features
        self.n_intervals = n_intervals
        self.baseline = nn.Linear(1, n_intervals, bias=False)
        if spec.kind == "linear":
            self.linear = nn.Linear(n_features, 1, bias=False)
        else:
            widths = [n_features, *spec.hidden]
            self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
            self.activation = nn.ReLU()
            self.dropout = nn.Dropout(spec.dropout)
            self.output = nn.Linear(widths[-1], n_intervals)
        self._zero_start()

    def _zero_start(self) -> None:
        """Baseline and the last layer start at zero, so the model first predicts the baseline."""
        with torch.no_grad():
            self.baseline.weight.zero_()
            if self.spec.kind == "linear":
                self.linear.weight.zero_()
            else:
                self.output.weight.zero_()
                self.output.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        base: Tensor = self.baseline(x.new_ones(x.shape[0], 1))
        if self.spec.kind == "linear":
            effect: Tensor = self.linear(x)
            return base + effect
        h = x
        for layer in self.hidden:
            h = self.dropout(self.activation(layer(h)))
        out: Tensor = self.output(h)
        return base + out


def build_model(
    spec: ModelSpec, n_features: int, n_intervals: int, seed: int | None = None
) -> DiscreteHazardModel:
    """A fresh model. Hidden layers use torch's default initialisation (torch's global RNG), or,
    given `seed`, exactly the vector `survival.spec.initial_parameters` gives the coordinator."""
    model = DiscreteHazardModel(spec, n_features, n_intervals)
    if seed is not None:
        load_flat_parameters(model, initial_parameters(spec, n_features, n_intervals, seed))
    return model


def init_baseline(model: nn.Module, events: np.ndarray, at_risk: np.ndarray) -> None:
    """Set alpha_k = logit(events_k / at_risk_k), smoothed (see `survival.spec.baseline_logits`),
    so that noised consortium counts (possibly zero or negative) still give finite logits."""
    baseline = _unwrap(model).baseline
    alpha = baseline_logits(np.asarray(events), np.asarray(at_risk))
    if alpha.shape != (baseline.out_features,):
        raise ValueError(
            f"got counts for {alpha.shape[0]} intervals, the model has {baseline.out_features}"
        )
    with torch.no_grad():
        baseline.weight.copy_(torch.as_tensor(alpha, dtype=baseline.weight.dtype).unsqueeze(1))


def hazard_ratios(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, float] | None:
    """exp(beta) by feature name for a `linear` model (hazard-odds ratio per unit of the
    standardised feature); None for an `mlp`, whose effects are not a single ratio."""
    inner = _unwrap(model)
    if inner.spec.kind != "linear":
        return None
    beta = inner.linear.weight.detach().double().reshape(-1).numpy()
    labels = list(names) if names is not None else [f"x{i}" for i in range(beta.size)]
    if len(labels) != beta.size:
        raise ValueError(f"got {len(labels)} names for {beta.size} coefficients")
    return {label: float(np.exp(b)) for label, b in zip(labels, beta, strict=True)}


def flat_parameters(model: nn.Module) -> np.ndarray:
    """All parameters as one float32 vector, in `parameter_layout` order."""
    return (
        torch.cat([p.detach().reshape(-1) for p in _unwrap(model).parameters()])
        .to(torch.float32)
        .numpy()
        .copy()
    )


def load_flat_parameters(model: nn.Module, vec: np.ndarray) -> None:
    """Inverse of `flat_parameters`; a vector of the wrong length or with NaN/inf is refused."""
    flat = np.asarray(vec)
    params = list(_unwrap(model).parameters())
    total = sum(p.numel() for p in params)
    if flat.shape != (total,):
        raise ValueError(f"parameter vector has shape {flat.shape}, the model needs ({total},)")
    if not np.all(np.isfinite(flat)):
        raise ValueError("parameter vector contains NaN or inf")
    source = torch.as_tensor(flat.astype(np.float32))
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(source[offset : offset + n].reshape(p.shape))
            offset += n


def layout_matches(model: nn.Module) -> bool:
    """Whether the model's parameter sizes follow `parameter_layout` (a cheap invariant check)."""
    inner = _unwrap(model)
    layout = parameter_layout(inner.spec, inner.n_features, inner.n_intervals)
    sizes = [p.numel() for p in inner.parameters()]
    return sizes == [int(np.prod(shape)) for _, shape in layout]


def _unwrap(model: nn.Module) -> DiscreteHazardModel:
    """The hazard model itself, also when wrapped by Opacus (`_module`)."""
    inner: object = model
    while not isinstance(inner, DiscreteHazardModel) and hasattr(inner, "_module"):
        inner = inner._module
    if not isinstance(inner, DiscreteHazardModel):
        raise TypeError(f"expected a model from survival.models.build_model, got {type(model)}")
    return inner
