"""Model specification and flat parameter layout, without torch.

The coordinator never imports torch, yet it owns the global parameter vector: it builds the
initial vector from public information (the plan's seed and the noised consortium event and
at-risk counts) and applies aggregated updates to it. This module is the single definition of the
parameter layout that both `survival.models` (torch) and the coordinator (numpy) use, so the two
can never disagree.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

BASELINE = "baseline"


class ModelSpec(BaseModel):
    """Which discrete-time hazard model to train.

    `linear`: logit h_k(x) = alpha_k + x·beta (a discrete-time Cox / logistic-hazard model).
    `mlp`: logit h_k(x) = alpha_k + MLP(x)_k, ReLU hidden layers.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["linear", "mlp"] = "mlp"
    hidden: tuple[int, ...] = Field(default=(32, 32))
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    baseline: Literal["shared", "per-site"] = Field(
        default="shared",
        description=(
            "shared: one baseline hazard for the consortium, trained like every parameter."
            " per-site: shared covariate effects, and each site keeps its own baseline hazard"
            " at the site (never aggregated; a site-stratified model)"
        ),
    )

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, hidden: tuple[int, ...]) -> tuple[int, ...]:
        if any(width < 1 or width > 4096 for width in hidden):
            raise ValueError("hidden layer widths must be between 1 and 4096")
        return hidden


def parameter_layout(
    spec: ModelSpec, n_features: int, n_intervals: int
) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of the model's parameters in flat-vector order."""
    if n_features < 1 or n_intervals < 1:
        raise ValueError("a model needs at least one feature and one time interval")
    layout: list[tuple[str, tuple[int, ...]]] = [(BASELINE, (n_intervals,))]
    if spec.kind == "linear":
        layout.append(("linear.weight", (1, n_features)))
        return layout
    fan_in = n_features
    for index, width in enumerate(spec.hidden):
        layout.append((f"hidden.{index}.weight", (width, fan_in)))
        layout.append((f"hidden.{index}.bias", (width,)))
        fan_in = width
    layout.append(("output.weight", (n_intervals, fan_in)))
    layout.append(("output.bias", (n_intervals,)))
    return layout


def parameter_count(spec: ModelSpec, n_features: int, n_intervals: int) -> int:
    """Length of the flat parameter vector."""
    return sum(int(np.prod(shape)) for _, shape in parameter_layout(spec, n_features, n_intervals))


def shared_offset(spec: ModelSpec, n_intervals: int) -> int:
    """Where the aggregated part of the flat vector starts: after the baseline (its first
    `n_intervals` values) when each site keeps its own baseline, else at 0."""
    return n_intervals if spec.baseline == "per-site" else 0


def shared_parameter_count(spec: ModelSpec, n_features: int, n_intervals: int) -> int:
    """Length of the part of the flat vector that secure aggregation averages."""
    return parameter_count(spec, n_features, n_intervals) - shared_offset(spec, n_intervals)


def baseline_logits(events: np.ndarray, at_risk: np.ndarray, prior: float = 0.5) -> np.ndarray:
    """Per-interval baseline logits logit(events / at_risk), smoothed so that noised or empty
    intervals (zero or negative counts after DP noise) still give a finite, sensible hazard."""
    events = np.clip(np.asarray(events, dtype=np.float64), 0.0, None)
    at_risk = np.clip(np.asarray(at_risk, dtype=np.float64), 0.0, None)
    if events.shape != at_risk.shape or events.ndim != 1:
        raise ValueError("events and at_risk must be 1-D arrays of the same length")
    events = np.minimum(events, at_risk)
    hazard = (events + prior) / (at_risk + 2.0 * prior)
    hazard = np.clip(hazard, 1e-6, 1.0 - 1e-6)
    return np.log(hazard / (1.0 - hazard))


def initial_parameters(
    spec: ModelSpec,
    n_features: int,
    n_intervals: int,
    seed: int,
    baseline: np.ndarray | None = None,
) -> np.ndarray:
    """The deterministic initial flat vector (float32) for a plan.

    Hidden layers use PyTorch's default uniform(±1/sqrt(fan_in)) initialisation, drawn from a seeded
    numpy generator so that the coordinator reproduces it without torch. The output layer (or the
    linear coefficients) starts at zero, so the initial model predicts exactly the baseline hazards:
    a calibrated start, which matters under DP where clipping biases the first steps.
    """
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    for name, shape in parameter_layout(spec, n_features, n_intervals):
        if name == BASELINE:
            values = np.zeros(shape) if baseline is None else np.asarray(baseline, dtype=np.float64)
            if values.shape != shape:
                raise ValueError(f"baseline has shape {values.shape}, expected {shape}")
        elif name.startswith("hidden."):
            fan_in = shape[1] if len(shape) == 2 else _fan_in_of_bias(name, spec, n_features)
            bound = 1.0 / np.sqrt(fan_in)
            values = rng.uniform(-bound, bound, size=shape)
        else:
            values = np.zeros(shape)
        parts.append(values.astype(np.float32).ravel())
    return np.concatenate(parts)


def _fan_in_of_bias(name: str, spec: ModelSpec, n_features: int) -> int:
    index = int(name.split(".")[1])
    return n_features if index == 0 else spec.hidden[index - 1]
