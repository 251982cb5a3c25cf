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

from federation.gaussian import calibrate_gaussian, gaussian_delta
from federation.plan import RunPlan

__all__ = ["calibrate_gaussian", "gaussian_delta", "stats_noise_multiplier"]


def stats_noise_multiplier(plan: RunPlan) -> float:
    """σ of the plan's statistics release: the plan's own, or calibrated to its ε share."""
    privacy = plan.privacy
    if privacy.stats_noise_multiplier is not None:
        return float(privacy.stats_noise_multiplier)
    return calibrate_gaussian(privacy.epsilon * privacy.stats_epsilon_share, privacy.delta)
