"""The default noise of the evaluation-metrics release: calibrated to a share of ε, spent once.

Why a calibrated default rather than a fixed σ: a fixed σ = 20 (the earlier default) made every
federated metric noise ("not resolvable") on a consortium of a few hundred held-out patients per
site, and σ small enough to resolve the metric would, repeated every round, overrun the held-out
patients' budget. The plan instead says how many evaluations it makes (`training.evaluate_every`,
by default the final model only) and which share of ε they may spend together
(`privacy.metrics_epsilon_share`); σ is then the smallest for which those k Gaussian releases
meet that share at the plan's δ.

k releases of the same sensitivity at noise σ compose *exactly* to one Gaussian release at
σ/√k (their privacy loss is Gaussian, with variances adding), so σ = √k · σ₁ with σ₁ from the
analytic Gaussian mechanism (`federation/gaussian.py`, exact for one release): both sides derive
the same σ from public plan fields with `math` alone. The metrics are computed on the held-out
partition, which no training or statistics release reads, so the site's ledger composes them in
parallel with training (the run's ε is the larger of the two partitions'): the metrics' share
takes nothing from training's noise, and with a share below 1 the held-out patients' ε stays
below the plan's ε even with the ledger's (slightly pessimistic) accountant.

This module does not import the plan (the plan imports it): `with_metrics_sigma` gets the plan's
privacy and training types from `RunPlan`'s validator, which fills the default in with it.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ValidationError

from federation.gaussian import calibrate_gaussian

__all__ = [
    "DEFAULT_METRICS_SIGMA",
    "METRICS_EPSILON_SHARE",
    "MIN_METRICS_SIGMA",
    "calibrated_metrics_sigma",
    "planned_evaluations",
    "with_metrics_sigma",
]

MIN_METRICS_SIGMA = 0.5
"""The plan's lower bound on the metrics σ (a larger ε share cannot calibrate below it)."""
METRICS_EPSILON_SHARE = 0.7
"""Default `privacy.metrics_epsilon_share`: the held-out patients get at most 0.7·ε."""


def planned_evaluations(rounds: int, evaluate_every: int) -> int:
    """How many metrics releases a plan makes: the final round always, and with
    `evaluate_every` = k ≥ 1 also every round r with r % k == 0 (the engine's rule)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if evaluate_every <= 0:
        return 1
    return rounds // evaluate_every + (1 if rounds % evaluate_every else 0)


def calibrated_metrics_sigma(epsilon: float, delta: float, share: float, evaluations: int) -> float:
    """σ of each of `evaluations` metrics releases that together spend `share` of ε at δ.

    Rounded *up* to three decimals (a readable number in the plan, never below the exact σ, so
    the share is never exceeded) and at least `MIN_METRICS_SIGMA`.
    """
    if not (0.0 < share < 1.0):
        raise ValueError(f"the metrics ε share must be in (0, 1), got {share}")
    if evaluations < 1:
        raise ValueError(f"evaluations must be >= 1, got {evaluations}")
    single = calibrate_gaussian(epsilon * share, delta)
    sigma = math.sqrt(evaluations) * single
    return max(math.ceil(sigma * 1000.0) / 1000.0, MIN_METRICS_SIGMA)


DEFAULT_METRICS_SIGMA = calibrated_metrics_sigma(3.0, 1e-5, METRICS_EPSILON_SHARE, 1)
"""The metrics σ of the default privacy (ε = 3, δ = 1e-5, one evaluation): 1.909. A plan
recalibrates it to its own ε, δ, share and evaluations unless it names σ."""


def with_metrics_sigma(
    data: Any, privacy_type: type[BaseModel], training_type: type[BaseModel]
) -> Any:
    """A raw plan (`RunPlan`'s before-validator input) with the metrics σ filled in when it is
    unset, from the plan's own ε, δ, share and number of evaluations. The value then stands in
    the plan's canonical JSON, so every site and the coordinator use (and hash) the same σ.
    Anything malformed is passed on untouched: the fields' own validation names it."""
    if not isinstance(data, dict):
        return data
    privacy, training = data.get("privacy", {}), data.get("training", {})
    if isinstance(privacy, privacy_type):
        privacy = privacy.model_dump(exclude_unset=True)
    if not isinstance(privacy, dict) or "metrics_noise_multiplier" in privacy:
        return data
    try:
        p: Any = privacy_type.model_validate(privacy)
        t: Any = training if isinstance(training, training_type) else training_type(**training)
        k = planned_evaluations(t.rounds, t.evaluate_every)
        sigma = calibrated_metrics_sigma(p.epsilon, p.delta, p.metrics_epsilon_share, k)
    except (ValidationError, TypeError, ValueError):
        return data
    return {**data, "privacy": {**privacy, "metrics_noise_multiplier": sigma}}
