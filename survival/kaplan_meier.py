"""Kaplan–Meier curve from per-interval event and at-risk totals released under DP noise.

The coordinator never sees a patient: what it learns of the consortium's survival is the
statistics release, one noised total of events d_k and patients at risk n_k per interval of the
plan's time grid (`federation.releases.StatsLayout`). On those totals the product-limit estimate
is the grouped (discrete-time) Kaplan–Meier

    S(c_k) = Π_{j ≤ k} (1 − d_j / n_j),

the same product the discrete-time hazard model predicts (`survival.loss.survival_curve`), so the
two curves are directly comparable (calibration-in-the-large).

Its uncertainty has two independent sources, and a band that showed only the first would be too
narrow exactly when the privacy noise is large (small consortia, strict ε):

- sampling: Greenwood's variance, Var(log S_k) ≈ Σ_j d_j / (n_j (n_j − d_j));
- the DP noise, whose standard deviation is public (σ·Δ·√sites per coordinate, the at-risk
  coordinate scaled by √K, see `StatsLayout.at_risk_weight`): propagated with the delta method,
  ∂ log(1 − d/n)/∂d = −1/(n − d) and ∂ log(1 − d/n)/∂n = d / (n (n − d)), so

      Var_noise(log S_k) ≈ Σ_j σ_d² / (n_j − d_j)² + σ_n² d_j² / (n_j (n_j − d_j))².

The coordinates' noise is independent across intervals, so both sums are sums of independent
terms. The pointwise band is built on the log(−log S) scale (Kalbfleisch & Prentice), which keeps
it inside (0, 1): S^{exp(± z·se)} with se² = Var(log S) / (log S)². This is the delta method, not
a bootstrap: it is deterministic (a report renders the same band twice) and its accuracy was
checked by simulation (`tests/unit/survival/test_kaplan_meier.py`: known counts, Gaussian noise of
known std, ~95% coverage of the true curve). It ignores the decoder's clipping of noised counts
to [0, n] and its monotone projection of the at-risk counts, which only matter when an interval's
counts are within a few noise stds of zero (the band is then wide anyway).

numpy only: `survival` imports nothing of the federation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["KaplanMeier", "kaplan_meier", "normal_quantile"]


@dataclass(frozen=True)
class KaplanMeier:
    """S at the end of each interval with its pointwise band and the two variance parts.

    `var_sampling` and `var_noise` are of log S (so their ratio says which source dominates)."""

    survival: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    var_sampling: np.ndarray
    var_noise: np.ndarray
    level: float

    @property
    def noise_share(self) -> np.ndarray:
        """Share of each point's variance that is DP noise (0 = pure sampling)."""
        total = self.var_sampling + self.var_noise
        share: np.ndarray = np.divide(
            self.var_noise, total, out=np.zeros_like(total), where=total > 0
        )
        return share


def normal_quantile(p: float) -> float:
    """Φ⁻¹(p) by bisection on erf: numpy has no inverse normal and scipy is not a dependency."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must lie in (0, 1)")
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if 0.5 * (1.0 + math.erf(mid / math.sqrt(2.0))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def kaplan_meier(
    events: np.ndarray,
    at_risk: np.ndarray,
    *,
    events_noise_std: float = 0.0,
    at_risk_noise_std: float = 0.0,
    level: float = 0.95,
) -> KaplanMeier:
    """The grouped Kaplan–Meier curve of (noised) totals, with a band for sampling and noise.

    `events[k]` and `at_risk[k]` are the consortium's totals in interval k (at risk at its start);
    the noise stds are those of each released coordinate (0 for exact counts: Greenwood alone).
    Noised counts are first made consistent (0 ≤ d ≤ n), as the coordinator's decoder does, so a
    noise draw below zero does not give a survival above 1.
    """
    d = np.clip(np.asarray(events, dtype=np.float64), 0.0, None)
    n = np.clip(np.asarray(at_risk, dtype=np.float64), 0.0, None)
    if d.shape != n.shape or d.ndim != 1:
        raise ValueError("events and at_risk must be 1-D arrays of the same length")
    if events_noise_std < 0 or at_risk_noise_std < 0:
        raise ValueError("noise standard deviations cannot be negative")
    if not 0.0 < level < 1.0:
        raise ValueError("level must lie in (0, 1)")
    d = np.minimum(d, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        hazard = np.where(n > 0, d / n, 0.0)
        survivors = n - d
        # an interval whose every patient had the event makes S = 0: its log-variance is infinite
        greenwood = np.where(survivors > 0, d / (n * survivors), np.where(d > 0, np.inf, 0.0))
        noise = np.where(
            survivors > 0,
            events_noise_std**2 / survivors**2 + at_risk_noise_std**2 * d**2 / (n * survivors) ** 2,
            np.where(n > 0, np.inf, 0.0),
        )
    survival = np.cumprod(1.0 - hazard)
    var_sampling = np.cumsum(greenwood)
    var_noise = np.cumsum(noise)
    z = normal_quantile(0.5 + level / 2.0)
    lower, upper = _loglog_band(survival, var_sampling + var_noise, z)
    return KaplanMeier(survival, lower, upper, var_sampling, var_noise, level)


def _loglog_band(
    survival: np.ndarray, var_log: np.ndarray, z: float
) -> tuple[np.ndarray, np.ndarray]:
    """S^{exp(±z·se)} with se the std of log(−log S): inside [0, 1] whatever the variance."""
    lower = np.zeros_like(survival)
    upper = np.ones_like(survival)
    inner = (survival > 0) & (survival < 1) & np.isfinite(var_log)
    log_s = np.log(survival[inner])
    se = np.sqrt(var_log[inner]) / np.abs(log_s)
    # S^{exp(+z se)} is the lower bound: a larger exponent on a number below 1 makes it smaller
    lower[inner] = survival[inner] ** np.exp(z * se)
    upper[inner] = survival[inner] ** np.exp(-z * se)
    top = survival >= 1  # no event yet: S = 1, the noise alone widens it (on the log scale)
    lower[top] = np.exp(-z * np.sqrt(np.where(np.isfinite(var_log[top]), var_log[top], np.inf)))
    zero = survival <= 0
    upper[zero] = np.where(np.isfinite(var_log[zero]) & (var_log[zero] <= 0), 0.0, 1.0)
    return lower, upper
