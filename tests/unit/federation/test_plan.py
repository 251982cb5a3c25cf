"""RunPlan validation: what an operator submits is checked before anything is stored."""

from __future__ import annotations

import json

import pytest

from federation.plan import PlanError, RunPlan, parse_plan
from federation.sessions import session_threshold

pytestmark = pytest.mark.unit

MINIMAL = """
name = "trial"
quorum = 2
[[features]]
kind = "numeric"
name = "age"
min = 40
max = 110
[[features]]
kind = "categorical"
name = "sex"
levels = ["F", "M"]
[time_grid]
cuts = [1000.0, 2000.0, 3000.0]
"""


def test_minimal_plan_gets_documented_defaults() -> None:
    plan = parse_plan(MINIMAL)
    assert plan.model.kind == "mlp"
    assert plan.privacy.epsilon == 3.0
    assert plan.feature_schema.encoded_names() == ["age", "sex=M"]


def test_canonical_json_round_trips_and_hash_is_stable() -> None:
    plan = parse_plan(MINIMAL)
    again = RunPlan.model_validate_json(plan.canonical_json())
    assert again == plan
    assert again.sha256() == plan.sha256()
    assert parse_plan(plan.canonical_json(), "json").sha256() == plan.sha256()


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ("max = 110", "max = 10"),  # min > max
        ("quorum = 2", "quorum = 1"),
        ("quorum = 2", "quorum = 2\n[training]\nrounds = 0"),
        ("quorum = 2", "quorum = 2\n[privacy]\nepsilon = -1"),
        ("quorum = 2", "quorum = 2\n[privacy]\ndelta = 0.5"),
        ("quorum = 2", "quorum = 2\nsurprise = 1"),
        ("cuts = [1000.0, 2000.0, 3000.0]", "cuts = [2000.0, 1000.0]"),
        ('levels = ["F", "M"]', 'levels = ["F"]'),
    ],
)
def test_bad_plans_name_the_offending_field(patch: str, field: str) -> None:
    with pytest.raises(PlanError) as caught:
        parse_plan(MINIMAL.replace(patch, field))
    message = str(caught.value)
    assert message.startswith("invalid plan: ")
    assert ":" in message.removeprefix("invalid plan: ")


def test_threshold_larger_than_quorum_is_refused() -> None:
    with pytest.raises(PlanError, match="threshold"):
        parse_plan(MINIMAL + "\n[secagg]\nthreshold = 3\n")


def test_duplicate_feature_names_are_refused() -> None:
    doubled = MINIMAL.replace('name = "sex"', 'name = "age"')
    with pytest.raises(PlanError):
        parse_plan(doubled)


def test_not_toml_and_not_an_object() -> None:
    with pytest.raises(PlanError, match="not valid TOML"):
        parse_plan("name = ")
    with pytest.raises(PlanError, match="top level"):
        parse_plan(json.dumps([1, 2]), "json")


@pytest.mark.parametrize(("n", "t"), [(2, 2), (3, 2), (4, 3), (5, 4), (9, 6), (10, 7)])
def test_default_threshold_is_two_thirds(n: int, t: int) -> None:
    assert session_threshold(parse_plan(MINIMAL), n) == t


@pytest.mark.parametrize(
    ("n", "c", "t"), [(3, 1, 3), (4, 1, 3), (5, 1, 4), (6, 2, 5), (10, 3, 7), (10, 6, 9)]
)
def test_threshold_is_above_half_of_sites_plus_colluders(n: int, c: int, t: int) -> None:
    plan = parse_plan(
        MINIMAL.replace("quorum = 2", f"quorum = {c + 2}")
        + f"\n[secagg]\nmax_colluding_sites = {c}"
    )
    assert session_threshold(plan, n) == t
    assert 2 * t - c > n  # two disjoint groups of honest signers cannot both reach t


def test_quorum_must_leave_two_honest_sites() -> None:
    with pytest.raises(PlanError, match="max_colluding_sites"):
        parse_plan(MINIMAL + "\n[secagg]\nmax_colluding_sites = 1")


# ------------------------------------------------------------------ evaluation and metrics noise
def _with(table: str, body: str) -> RunPlan:
    return parse_plan(MINIMAL + f"[{table}]\n{body}\n")


def test_by_default_only_the_final_model_is_evaluated_with_a_calibrated_sigma() -> None:
    from federation.gaussian import gaussian_epsilon

    plan = parse_plan(MINIMAL)
    assert plan.training.evaluate_every == 0  # the final model only: one metrics release
    sigma = plan.privacy.metrics_noise_multiplier
    share = plan.privacy.metrics_epsilon_share
    spent = gaussian_epsilon(sigma, plan.privacy.delta)
    # the one release spends at most its share, and not wastefully less (σ rounded up by 1e-3)
    assert share * plan.privacy.epsilon * 0.99 <= spent <= share * plan.privacy.epsilon
    assert sigma < 5.0  # resolvable: the earlier fixed default was 20


def test_evaluating_every_round_spreads_the_same_budget_over_more_releases() -> None:
    final = parse_plan(MINIMAL).privacy.metrics_noise_multiplier
    every = _with("training", "rounds = 5\nevaluate_every = 1").privacy.metrics_noise_multiplier
    # five releases compose like one at σ/√5: each figure is √5 times noisier
    assert every == pytest.approx(final * 5**0.5, rel=2e-3)


def test_the_metrics_sigma_follows_the_plans_own_epsilon_and_share() -> None:
    low = _with("privacy", "epsilon = 1.0").privacy.metrics_noise_multiplier
    wide = _with("privacy", "metrics_epsilon_share = 0.9").privacy.metrics_noise_multiplier
    default = parse_plan(MINIMAL).privacy.metrics_noise_multiplier
    assert low > default > wide


def test_an_explicit_metrics_sigma_and_evaluate_every_are_kept() -> None:
    plan = parse_plan(
        MINIMAL + "[training]\nevaluate_every = 2\n[privacy]\nmetrics_noise_multiplier = 20.0\n"
    )
    assert plan.privacy.metrics_noise_multiplier == 20.0
    assert plan.training.evaluate_every == 2


def test_the_calibrated_sigma_is_pinned_in_the_canonical_json() -> None:
    plan = parse_plan(MINIMAL)
    body = json.loads(plan.canonical_json())
    assert body["privacy"]["metrics_noise_multiplier"] == plan.privacy.metrics_noise_multiplier
    # re-validating a plan built from Python objects calibrates the same way
    again = RunPlan(
        **{
            **plan.model_dump(),
            "privacy": plan.privacy.model_dump(exclude={"metrics_noise_multiplier"}),
        }
    )
    assert again == plan


@pytest.mark.parametrize("bad", ["evaluate_every = -1", "evaluate_every = 1.5"])
def test_a_negative_evaluate_every_is_refused(bad: str) -> None:
    with pytest.raises(PlanError, match="evaluate_every"):
        _with("training", bad)


@pytest.mark.parametrize("share", ["0.0", "0.95"])
def test_a_metrics_share_outside_its_range_is_refused(share: str) -> None:
    with pytest.raises(PlanError, match="metrics_epsilon_share"):
        _with("privacy", f"metrics_epsilon_share = {share}")


def test_the_largest_share_still_fits_the_ledgers_rdp_charge() -> None:
    from site_agent.accounting import Entry, epsilon_of

    for epsilon in ("0.5", "3.0", "10.0"):
        plan = _with(
            "privacy", f'epsilon = {epsilon}\nmetrics_epsilon_share = 0.9\naccountant = "rdp"'
        )
        entry = Entry(plan.privacy.metrics_noise_multiplier, 1.0, 1)
        assert epsilon_of([entry], plan.privacy.delta, "rdp") <= plan.privacy.epsilon
