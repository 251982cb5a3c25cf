"""The noise of a plan's one-off releases, derived from public plan fields alone.

Both sides need the statistics release's noise multiplier: the site adds that noise, the
coordinator uses its (public) level to refuse estimates that drown in it. A plan may name σ
outright (`privacy.stats_noise_multiplier`) or give the share of ε the release may spend alone
(`privacy.stats_epsilon_share`); σ is then the smallest for which one Gaussian release meets
that share at the plan's δ, by the analytic Gaussian mechanism (Balle & Wang, ICML 2018,
Theorem 8), which is exact for a single release. It needs only `math`, so the coordinator (no
torch, no accountant) and every site compute the same σ. The site still *charges* the release
through its own ledger's accountant, which never reports less than this exact figure.
"""

from __future__ import annotations

import math

from federation.plan import RunPlan


def _phi(x: float) -> float:
    """Standard normal CDF."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gaussian_delta(noise_multiplier: float, epsilon: float) -> float:
    """The exact δ at which one Gaussian release with noise std `noise_multiplier` × sensitivity
    is (ε, δ)-DP (Balle & Wang 2018, Theorem 8)."""
    if noise_multiplier <= 0:
        return 1.0
    a = 1.0 / (2.0 * noise_multiplier)
    b = epsilon * noise_multiplier
    return _phi(a - b) - math.exp(epsilon) * _phi(-a - b)


def calibrate_gaussian(epsilon: float, delta: float, tolerance: float = 1e-6) -> float:
    """The smallest σ (to relative `tolerance`) whose single Gaussian release is (ε, δ)-DP."""
    if not (epsilon > 0 and 0 < delta < 1):
        raise ValueError(f"need ε > 0 and 0 < δ < 1, got ε={epsilon}, δ={delta}")
    lo, hi = 0.0, 1.0
    while gaussian_delta(hi, epsilon) > delta:
        lo, hi = hi, hi * 2.0
        if hi > 1e6:
            raise ValueError(f"ε={epsilon} at δ={delta} needs σ > 1e6")
    while hi - lo > tolerance * hi:
        mid = (lo + hi) / 2.0
        if gaussian_delta(mid, epsilon) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def stats_noise_multiplier(plan: RunPlan) -> float:
    """σ of the plan's statistics release: the plan's own, or calibrated to its ε share."""
    privacy = plan.privacy
    if privacy.stats_noise_multiplier is not None:
        return float(privacy.stats_noise_multiplier)
    return calibrate_gaussian(privacy.epsilon * privacy.stats_epsilon_share, privacy.delta)
