"""Distributed mode's integer releases: one encoding per release, derived from the plan alone.

In `training.mode = "distributed"` every release is a sum over the session's sites of integer
vectors, each carrying an integer Skellam noise *share* (site_agent/skellam.py), so the noise
of the honest sites adds up in the sum instead of each site drowning its own contribution. The
sites and the coordinator must agree on the fixed-point scale of every release without
exchanging it, so it is a function of public plan fields here:

- statistics: the real statistics vector (federation/releases.py `stats_vector`), L2
  sensitivity `StatsLayout.sensitivity`;
- update: the sum of per-patient gradients, each clipped to `training.max_grad_norm`
  (sensitivity = that norm) over one Poisson batch of rate `training.sample_rate`;
- metrics: the weighted metric sums (`MetricsLayout.encode`, sensitivity ≤ 1), with the
  plan's subgroup and importance blocks in the final evaluation (`EvaluationRelease`).

`federation.integer_release.IntegerEncoding` turns each into integers with a deterministic
sensitivity bound, checks the per-site range that keeps the modular sum from wrapping, and
decodes the sum. The coordinator divides the decoded gradient sum by the expected batch size
q·N̂ (N̂ the DP-estimated consortium size): no patient count leaves a site in the update.
"""

from __future__ import annotations

import math

from federation.evaluation_release import EvaluationRelease
from federation.integer_release import IntegerEncoding, choose_scale
from federation.plan import RunPlan
from federation.releases import Purpose, StatsLayout
from survival.spec import parameter_count


def is_distributed(plan: RunPlan) -> bool:
    """Whether the plan's releases are distributed-noise integer sums."""
    return plan.training.mode == "distributed"


def _sensitivity_and_length(plan: RunPlan, purpose: Purpose, round_: int) -> tuple[float, int]:
    schema, n_intervals = plan.feature_schema, plan.time_grid.n_intervals
    if purpose is Purpose.STATS:
        layout = StatsLayout.for_schema(schema, n_intervals)
        return layout.sensitivity, layout.length
    if purpose is Purpose.UPDATE:
        d = parameter_count(plan.model, schema.n_encoded, n_intervals)
        return plan.training.max_grad_norm, d
    metrics = EvaluationRelease.for_round(plan, round_)  # the final one carries the blocks
    return metrics.sensitivity, metrics.length


def encoding(plan: RunPlan, purpose: Purpose, round_: int = 0) -> IntegerEncoding:
    """The integer encoding of `purpose`'s release under a distributed-mode plan (`round_`
    matters for the metrics: the final evaluation's has the plan's subgroup blocks)."""
    sensitivity, length = _sensitivity_and_length(plan, purpose, round_)
    return IntegerEncoding(
        scale=choose_scale(sensitivity, length), sensitivity=sensitivity, length=length
    )


def summed_noise_std(plan: RunPlan, noise_multiplier: float, sensitivity: float, n: int) -> float:
    """A public upper estimate of the noise std (real units) in a sum of n sites' releases: each
    honest site adds at least 1/noise_shares of the target variance, a site trusting only itself
    adds all of it, so the sum holds between 1 and n targets; the decoder plans for the larger
    so that it never mistakes noise for signal."""
    del plan  # every site may trust only itself: n full shares at most
    return noise_multiplier * sensitivity * math.sqrt(max(n, 1))
