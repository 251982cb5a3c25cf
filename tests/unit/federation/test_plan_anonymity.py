"""`[privacy.k_anonymity]`: an optional, validated plan section that leaves other plans' hashes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.plan import PlanError, RunPlan, parse_plan
from tests.unit.federation.test_plan import MINIMAL as PLAN

pytestmark = pytest.mark.unit

GRADE = """[[features]]
kind = "categorical"
name = "grade"
levels = ["1", "2", "3"]
"""
MINIMAL = PLAN.replace("[time_grid]", GRADE + "[time_grid]")  # test_plan's, with a third feature

LAYER = """
[privacy.k_anonymity]
k = 5
quasi_identifiers = ["age", "sex", "grade"]
bands = 7
[privacy.k_anonymity.cuts]
age = [60.0, 75.0]
[privacy.k_anonymity.hierarchies.grade]
"2" = "high"
"3" = "high"
"""


def test_the_layer_parses_with_its_bands_cuts_and_hierarchies() -> None:
    layer = parse_plan(MINIMAL + LAYER).privacy.k_anonymity
    assert layer is not None
    assert (layer.k, layer.quasi_identifiers, layer.bands) == (5, ["age", "sex", "grade"], 7)
    assert layer.cuts == {"age": [60.0, 75.0]}
    assert layer.hierarchies == {"grade": {"2": "high", "3": "high"}}


def test_a_plan_without_the_layer_hashes_as_before_and_one_with_it_differs() -> None:
    plain = parse_plan(MINIMAL)
    assert plain.privacy.k_anonymity is None
    assert "k_anonymity" not in plain.canonical_json()
    assert "k_anonymity" not in plain.model_dump_json()
    layered = parse_plan(MINIMAL + LAYER)
    assert layered.sha256() != plain.sha256()
    again = RunPlan.model_validate_json(layered.canonical_json())
    assert again == layered and again.sha256() == layered.sha256()
    assert RunPlan.model_validate_json(layered.model_dump_json()) == layered  # the saved plan


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 1000), st.integers(1, 50))
def test_the_hash_pins_the_layers_parameters(k: int, bands: int) -> None:
    text = MINIMAL + f'[privacy.k_anonymity]\nk = {k}\nquasi_identifiers = ["age"]\n'
    one = parse_plan(text + f"bands = {bands}\n")
    other = parse_plan(text + f"bands = {bands + 1}\n")
    assert one.sha256() != other.sha256()
    assert parse_plan(one.canonical_json(), "json").sha256() == one.sha256()


def _error(layer: str) -> str:
    with pytest.raises(PlanError) as caught:
        parse_plan(MINIMAL + "[privacy.k_anonymity]\n" + layer)
    return str(caught.value)


def test_an_unknown_quasi_identifier_is_named_with_the_feature_meant() -> None:
    message = _error('k = 5\nquasi_identifiers = ["agee", "sex"]\n')
    assert "privacy.k_anonymity.quasi_identifiers" in message
    assert "'agee' is not a plan feature" in message and "(did you mean 'age'?)" in message


@pytest.mark.parametrize(
    ("layer", "needles"),
    [
        ('k = 1\nquasi_identifiers = ["age"]\n', ["privacy.k_anonymity.k", "greater than"]),
        ("k = 5\nquasi_identifiers = []\n", ["privacy.k_anonymity.quasi_identifiers"]),
        ('k = 5\nquasi_identifiers = ["age", "age"]\n', ["more than once"]),
        ('quasi_identifiers = ["age"]\n', ["privacy.k_anonymity.k", "missing"]),
        ('k = 5\nquasi_identifiers = ["age"]\nkk = 3\n', ["unknown key 'kk'", "'k'"]),
        ('k = 5\nquasi_identifiers = ["age"]\nbands = 0\n', ["privacy.k_anonymity.bands"]),
        (
            'k = 5\nquasi_identifiers = ["age"]\ncuts = {age = [70.0, 60.0]}\n',
            ["cuts.age", "strictly increasing"],
        ),
        (
            'k = 5\nquasi_identifiers = ["age"]\ncuts = {age = [30.0, 60.0]}\n',
            ["cuts.age", "strictly inside", "[40, 110]"],
        ),
        ('k = 5\nquasi_identifiers = ["age"]\ncuts = {age = []}\n', ["cuts.age is empty"]),
        (
            'k = 5\nquasi_identifiers = ["sex"]\ncuts = {sex = [1.0]}\n',
            ["cuts.sex", "not a numeric quasi-identifier"],
        ),
        (
            'k = 5\nquasi_identifiers = ["age"]\ncuts = {kappa = [1.0]}\n',
            ["cuts.kappa", "not a numeric quasi-identifier"],
        ),
        (
            'k = 5\nquasi_identifiers = ["grade"]\nhierarchies = {grade = {"4" = "x"}}\n',
            ["hierarchies.grade", "'4' is not a level", "['1', '2', '3']"],
        ),
        (
            'k = 5\nquasi_identifiers = ["sex"]\nhierarchies = {grade = {"2" = "x"}}\n',
            ["hierarchies.grade", "not a categorical quasi-identifier"],
        ),
        (
            'k = 5\nquasi_identifiers = ["age"]\nhierarchies = {age = {"2" = "x"}}\n',
            ["hierarchies.age", "not a categorical quasi-identifier"],
        ),
        (
            'k = 5\nquasi_identifiers = ["grade"]\nhierarchies = {grade = {"2" = " "}}\n',
            ["hierarchies.grade.2", "label is empty"],
        ),
    ],
)
def test_a_bad_layer_is_refused_naming_the_cause(layer: str, needles: list[str]) -> None:
    message = _error(layer)
    assert message.startswith("invalid plan: ")
    for needle in needles:
        assert needle in message, message
