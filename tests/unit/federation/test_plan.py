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
