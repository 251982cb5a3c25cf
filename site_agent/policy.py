"""Does a run plan fit this hospital's local policy? The answer, if no, is what the operator sees.

Every failed check is reported (joined by "; "), each naming the plan field and the policy limit,
so an operator fixes a plan in one go instead of discovering limits one refusal at a time.
"""

from __future__ import annotations

from typing import Any

from federation.plan import RunPlan
from site_agent.config import SitePolicy


def check_plan(
    plan: RunPlan, policy: SitePolicy, cohort_size: int, lifetime_spent: float
) -> str | None:
    """None if the site can take part in `plan`, else the reason(s) it refuses.

    `cohort_size` is the number of usable training rows; `lifetime_spent` the ledger's lifetime ε
    so far. The lifetime check is conservative: it assumes the plan's ε adds to what is spent,
    whereas the ledger's accountant composes more tightly (and enforces the exact cap per release).
    """
    reasons: list[str] = []
    if plan.purpose not in policy.allowed_purposes:
        reasons.append(
            f"plan.purpose {plan.purpose!r} is not in policy.allowed_purposes"
            f" {list(policy.allowed_purposes)}"
        )
    if policy.allowed_features is not None:
        allowed = set(policy.allowed_features)
        refused = [f.name for f in plan.features if f.name not in allowed]
        if refused:
            reasons.append(
                f"plan.features {refused} not in policy.allowed_features"
                f" {sorted(policy.allowed_features)}"
            )
    if plan.model.kind not in policy.allowed_model_kinds:
        reasons.append(
            f"plan.model.kind {plan.model.kind!r} not in policy.allowed_model_kinds"
            f" {list(policy.allowed_model_kinds)}"
        )
    epsilon = plan.privacy.epsilon
    if epsilon > policy.max_epsilon_per_run:
        reasons.append(
            f"plan.privacy.epsilon {epsilon:g} exceeds policy.max_epsilon_per_run"
            f" {policy.max_epsilon_per_run:g}"
        )
    if plan.privacy.delta > policy.max_delta:
        reasons.append(
            f"plan.privacy.delta {plan.privacy.delta:g} exceeds policy.max_delta"
            f" {policy.max_delta:g}"
        )
    if plan.quorum < policy.min_session_sites:
        reasons.append(
            f"plan.quorum {plan.quorum} is below policy.min_session_sites"
            f" {policy.min_session_sites} (a session of {plan.quorum} would be allowed)"
        )
    if plan.secagg.max_colluding_sites < policy.max_colluding_sites:
        reasons.append(
            f"plan.secagg.max_colluding_sites {plan.secagg.max_colluding_sites} is below"
            f" policy.max_colluding_sites {policy.max_colluding_sites}"
        )
    if cohort_size < policy.min_cohort_size:
        reasons.append(
            f"training cohort of {cohort_size} rows is below policy.min_cohort_size"
            f" {policy.min_cohort_size}"
        )
    remaining = policy.lifetime_epsilon - lifetime_spent
    if epsilon > remaining:
        reasons.append(
            f"plan.privacy.epsilon {epsilon:g} exceeds the remaining lifetime budget"
            f" {max(remaining, 0.0):.4g} (policy.lifetime_epsilon {policy.lifetime_epsilon:g},"
            f" spent {lifetime_spent:.4g})"
        )
    return "; ".join(reasons) if reasons else None


def policy_summary(policy: SitePolicy, lifetime_spent: float) -> dict[str, Any]:
    """The wire's PolicySummary fields (federation.proto), for Hello.

    An empty `allowed_features` on the wire means "any feature" (policy None); a policy that
    allows no feature at all is sent as the impossible name "" so it is not mistaken for "any".
    """
    if policy.allowed_features is None:
        features: list[str] = []
    else:
        features = list(policy.allowed_features) or [""]
    return {
        "allowed_features": features,
        "max_epsilon_per_run": float(policy.max_epsilon_per_run),
        "lifetime_epsilon_budget": float(policy.lifetime_epsilon),
        "lifetime_epsilon_spent": float(lifetime_spent),
        "max_delta": float(policy.max_delta),
        "min_cohort_size": int(policy.min_cohort_size),
        "allowed_model_kinds": list(policy.allowed_model_kinds),
    }
