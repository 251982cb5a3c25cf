"""The site's policy check of a plan: every reason it refuses for, each naming the plan field and
the policy limit, all of them at once, joined by "; " (an operator fixes a plan in one go)."""

from __future__ import annotations

from typing import Any

import pytest

from federation.plan import RunPlan, parse_plan
from site_agent.config import SitePolicy
from site_agent.policy import check_plan, policy_summary

pytestmark = pytest.mark.unit

PLAN = """
name = "trial"
quorum = {quorum}
[[features]]
kind = "numeric"
name = "age"
min = 40
max = 110
[[features]]
kind = "numeric"
name = "kappa"
min = 0
max = 100
[time_grid]
cuts = [1000.0, 2000.0]
[model]
kind = "linear"
[privacy]
epsilon = {epsilon}
delta = {delta}
[secagg]
max_colluding_sites = 0
"""


def plan(quorum: int = 3, epsilon: float = 3.0, delta: float = 1e-5) -> RunPlan:
    return parse_plan(PLAN.format(quorum=quorum, epsilon=epsilon, delta=delta))


def policy(**changes: Any) -> SitePolicy:
    base: dict[str, Any] = {
        "allowed_features": None,
        "max_epsilon_per_run": 3.0,
        "lifetime_epsilon": 10.0,
        "max_delta": 1e-5,
        "min_cohort_size": 100,
        "allowed_model_kinds": ["linear", "mlp"],
        "min_session_sites": 3,
        "max_colluding_sites": 0,
    }
    return SitePolicy(**{**base, **changes})


def test_a_plan_inside_the_policy_is_accepted() -> None:
    assert check_plan(plan(), policy(), cohort_size=100, lifetime_spent=7.0) is None


# (what differs from the accepted case, the one reason it must give)
REFUSALS: list[tuple[dict[str, Any], dict[str, Any], int, float, str]] = [
    (
        {},
        {"allowed_features": ["age"]},
        100,
        0.0,
        "plan.features ['kappa'] not in policy.allowed_features ['age']",
    ),
    (
        {},
        {"allowed_model_kinds": ["mlp"]},
        100,
        0.0,
        "plan.model.kind 'linear' not in policy.allowed_model_kinds ['mlp']",
    ),
    (
        {"epsilon": 4.0},
        {},
        100,
        0.0,
        "plan.privacy.epsilon 4 exceeds policy.max_epsilon_per_run 3",
    ),
    ({"delta": 2e-5}, {}, 100, 0.0, "plan.privacy.delta 2e-05 exceeds policy.max_delta 1e-05"),
    ({"quorum": 2}, {}, 100, 0.0, "plan.quorum 2 is below policy.min_session_sites 3"),
    (
        {},
        {"max_colluding_sites": 1},
        100,
        0.0,
        "plan.secagg.max_colluding_sites 0 is below policy.max_colluding_sites 1",
    ),
    ({}, {}, 99, 0.0, "training cohort of 99 rows is below policy.min_cohort_size 100"),
    ({}, {}, 100, 8.0, "plan.privacy.epsilon 3 exceeds the remaining lifetime budget 2"),
]


@pytest.mark.parametrize(("plan_changes", "policy_changes", "cohort", "spent", "reason"), REFUSALS)
def test_each_reason_alone(
    plan_changes: dict[str, Any],
    policy_changes: dict[str, Any],
    cohort: int,
    spent: float,
    reason: str,
) -> None:
    refusal = check_plan(plan(**plan_changes), policy(**policy_changes), cohort, spent)
    assert refusal is not None
    assert "; " not in refusal, refusal  # exactly one reason
    assert refusal.startswith(reason), refusal


def test_every_reason_at_once_joined_in_order() -> None:
    refusal = check_plan(
        plan(quorum=2, epsilon=4.0, delta=2e-5),
        policy(allowed_features=["age"], allowed_model_kinds=["mlp"], max_colluding_sites=1),
        cohort_size=99,
        lifetime_spent=8.0,
    )
    assert refusal is not None
    reasons = refusal.split("; ")
    assert len(reasons) == len(REFUSALS), reasons
    expected = [reason for *_, reason in REFUSALS]
    expected[-1] = "plan.privacy.epsilon 4 exceeds the remaining lifetime budget 2"  # ε is 4 here
    for got, want in zip(reasons, expected, strict=True):
        assert got.startswith(want), (got, want)


def test_lifetime_reason_says_what_is_spent_and_never_goes_negative() -> None:
    refusal = check_plan(plan(), policy(), cohort_size=100, lifetime_spent=12.5)
    assert refusal == (
        "plan.privacy.epsilon 3 exceeds the remaining lifetime budget 0"
        " (policy.lifetime_epsilon 10, spent 12.5)"
    )


def test_an_empty_allow_list_refuses_every_feature() -> None:
    refusal = check_plan(plan(), policy(allowed_features=[]), 100, 0.0)
    assert refusal is not None and "plan.features ['age', 'kappa']" in refusal


def test_policy_summary_tells_any_feature_from_no_feature() -> None:
    spent = 1.25
    assert policy_summary(policy(), spent)["allowed_features"] == []  # any
    assert policy_summary(policy(allowed_features=[]), spent)["allowed_features"] == [""]  # none
    summary = policy_summary(policy(allowed_features=["age"]), spent)
    assert summary["allowed_features"] == ["age"]
    assert summary["lifetime_epsilon_spent"] == spent
    assert summary["lifetime_epsilon_budget"] == 10.0
