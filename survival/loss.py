"""Per-patient discrete-time hazard likelihood, and predictions derived from hazard logits.

A model outputs one logit per interval: h_k = sigmoid(logit_k) = P(event in k | alive at k).
The negative log-likelihood is a sum over patients (what DP-SGD's per-sample clipping needs, and
what the Cox partial likelihood is not):

- event in interval k:    −log h_k − Σ_{j<k} log(1 − h_j)
- censored in interval k: −Σ_{j≤k} log(1 − h_j)

Convention: a patient censored in interval k counts as having survived interval k. This matches
`TimeGrid.interval_counts` (they are in interval k's at-risk set, whose empirical hazard is then
the maximum-likelihood baseline) and is exact for patients followed past the horizon. log h and
log(1 − h) are computed as logsigmoid(±logit), which is stable for any logit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nll_per_patient(logits: Tensor, interval: Tensor, event: Tensor) -> Tensor:
    """Negative log-likelihood of each patient, shape [B]."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be [B, K], got shape {tuple(logits.shape)}")
    batch, n_intervals = logits.shape
    if interval.shape != (batch,) or event.shape != (batch,):
        raise ValueError(
            f"interval and event must have shape ({batch},), got "
            f"{tuple(interval.shape)} and {tuple(event.shape)}"
        )
    index = interval.long()
    if batch and (int(index.min()) < 0 or int(index.max()) >= n_intervals):
        raise ValueError(f"interval indices must lie in [0, {n_intervals})")
    log_survive = F.logsigmoid(-logits)  # log(1 − h_j)
    log_hazard = F.logsigmoid(logits)  # log h_j
    columns = torch.arange(n_intervals, device=logits.device).unsqueeze(0)
    upto = (columns <= index.unsqueeze(1)).to(logits.dtype)
    survived = (log_survive * upto).sum(dim=1)  # Σ_{j≤k} log(1 − h_j)
    own_survive = log_survive.gather(1, index.unsqueeze(1)).squeeze(1)
    own_hazard = log_hazard.gather(1, index.unsqueeze(1)).squeeze(1)
    e = event.to(logits.dtype)
    # For an event, swap interval k's survival term for its hazard term.
    return -(survived + e * (own_hazard - own_survive))


def survival_curve(logits: Tensor) -> Tensor:
    """S at each cut: S_k = Π_{j≤k} (1 − h_j), shape [B, K], non-increasing in [0, 1]."""
    return torch.exp(torch.cumsum(F.logsigmoid(-logits), dim=1))


def risk_score(logits: Tensor, widths: Tensor | None = None) -> Tensor:
    """Higher = worse: the expected time lost within the grid, Σ_k w_k (1 − S_k).

    This is the horizon minus the restricted mean survival time (with S taken at the end of each
    interval), so it uses the whole curve rather than one time point. `widths` defaults to equal
    widths, for which it is Σ_k (1 − S_k); the ranking (hence every C-index) only depends on the
    widths' ratios.
    """
    lost = 1.0 - survival_curve(logits)
    if widths is None:
        return lost.sum(dim=1)
    return (lost * widths.to(lost.dtype).unsqueeze(0)).sum(dim=1)
