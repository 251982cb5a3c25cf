"""The plan's `[evaluation]` table: names checked against the features, public bands, levels read
off the design matrix exactly as the schema encodes rows."""

from __future__ import annotations

import numpy as np
import pytest

from federation import distributed
from federation.evaluation_release import BLOCK, EvaluationRelease
from federation.plan import PlanError, parse_plan
from federation.plan_evaluation import MISSING_LEVEL, subgroups
from federation.releases import Purpose
from survival.schema import FeatureSchema

pytestmark = pytest.mark.unit

BASE = """
name = "evaluation"
[time_grid]
cuts = [1.0, 2.0]
[training]
mode = "{mode}"
[[features]]
kind = "numeric"
name = "age"
min = 40.0
max = 110.0
[[features]]
kind = "categorical"
name = "sex"
levels = ["F", "M"]
required = false
[[features]]
kind = "numeric"
name = "creat"
min = 0.2
max = 15.0
required = false
impute = 1.0
"""


def _plan(evaluation: str, mode: str = "local") -> str:
    return BASE.format(mode=mode) + "\n[evaluation]\n" + evaluation + "\n"


def test_a_plan_without_the_table_keeps_its_hash_and_has_no_blocks() -> None:
    plan = parse_plan(BASE.format(mode="local"))
    assert '"evaluation":' not in plan.canonical_json()
    assert not plan.evaluation.active
    named = parse_plan(_plan('subgroups = ["sex"]'))
    assert '"evaluation":' in named.canonical_json()
    assert named.sha256() != plan.sha256()


@pytest.mark.parametrize(
    ("evaluation", "message"),
    [
        ('subgroups = ["agee"]', "'agee' is not a feature of this plan (did you mean 'age'?)"),
        ('subgroups = ["sex", "sex"]', "named twice"),
        ('subgroups = ["age"]\ncuts = { sex = [1.0] }', "'sex' is not one of the subgroups"),
        ('subgroups = ["sex"]\ncuts = { sex = [1.0] }', "categorical"),
        ('subgroups = ["age"]\ncuts = { age = [70.0, 60.0] }', "strictly increasing"),
        ('subgroups = ["age"]\ncuts = { age = [30.0] }', "inside its bounds [40, 110]"),
        ('subgroups = ["age"]\nimportanse = true', "importanse"),
    ],
)
def test_bad_tables_are_refused_with_the_cause(evaluation: str, message: str) -> None:
    with pytest.raises(PlanError) as caught:
        parse_plan(_plan(evaluation))
    assert message in str(caught.value)
    assert "evaluation" in str(caught.value)


def test_distributed_mode_encodes_the_blocks_of_the_final_evaluation() -> None:
    plan = parse_plan(_plan('subgroups = ["sex"]\nimportance = true', mode="distributed"))
    final = EvaluationRelease.for_round(plan, plan.training.rounds)
    encoding = distributed.encoding(plan, Purpose.METRICS, plan.training.rounds)
    assert encoding.length == final.length == BLOCK * (1 + 3 + 3)
    assert encoding.sensitivity == final.sensitivity
    assert distributed.encoding(plan, Purpose.METRICS, 1).length == BLOCK == 7


def test_levels_are_public_bands_and_declared_levels_read_off_the_design_matrix() -> None:
    plan = parse_plan(_plan('subgroups = ["age", "sex", "creat"]\ncuts = { age = [65.0, 80.0] }'))
    groups = {g.feature: g for g in subgroups(plan.evaluation, plan.feature_schema)}
    assert groups["age"].labels == ("[40, 65)", "[65, 80)", "[80, 110]")
    assert groups["sex"].labels == ("F", "M", MISSING_LEVEL)
    assert groups["creat"].labels == ("[0.2, 7.6)", "[7.6, 15]", MISSING_LEVEL)  # the midpoint
    schema: FeatureSchema = plan.feature_schema
    columns = {
        "age": [50, 65, 79.9, 80, 110],
        "sex": ["F", "M", None, "M", "F"],
        "creat": [1.0, None, 8.0, 7.6, 0.5],
    }
    raw = schema.raw_matrix(columns)
    np.testing.assert_array_equal(groups["age"].assign(raw), [0, 1, 1, 2, 2])
    np.testing.assert_array_equal(groups["sex"].assign(raw), [0, 1, 2, 1, 0])
    np.testing.assert_array_equal(groups["creat"].assign(raw), [0, 2, 1, 1, 0])
