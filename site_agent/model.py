"""The global model applied to this site's rows: consortium standardisation and predictions.

Training (`site_agent.train`) and evaluation (`site_agent.handlers`) both start from the raw
design matrix and the consortium's standardisation, never a local one, so that every site feeds
the shared model features on the same scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from survival.loss import risk_score, survival_curve
from survival.models import build_model, load_flat_parameters
from survival.schema import Standardization

if TYPE_CHECKING:
    from federation.plan import RunPlan


def standardise(raw: np.ndarray, means: Sequence[float], scales: Sequence[float]) -> np.ndarray:
    """Raw rows on the consortium's scale (means and scales from the federated statistics)."""
    return Standardization(means=list(means), stds=list(scales)).apply(raw)


def predict(
    plan: RunPlan,
    global_vector: np.ndarray,
    raw: np.ndarray,
    means: Sequence[float],
    scales: Sequence[float],
) -> tuple[np.ndarray, np.ndarray]:
    """(survival curves [n, K] at the grid cuts, risk scores [n]) of the global model: what the
    held-out metrics are computed from (and the demo's scoring)."""
    model = build_model(plan.model, plan.feature_schema.n_encoded, plan.time_grid.n_intervals)
    load_flat_parameters(model, global_vector)
    model.eval()
    x = torch.as_tensor(standardise(raw, means, scales))
    with torch.no_grad():
        logits = model(x)
        surv = survival_curve(logits).numpy().astype(np.float64)
        risk = risk_score(logits).numpy().astype(np.float64)
    return surv, risk
