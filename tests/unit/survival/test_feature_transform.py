"""A numeric feature's `transform = "log1p"`: the model's column is log(1 + clipped value), the DP
bounds follow it, and everything a plan states in the column's own units (bounds, imputation,
subgroup cuts, k-anonymity bands) still means what it says; a plan without it keeps its hash."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from federation.plan import parse_plan
from federation.plan_anonymity import KAnonymityPlan
from federation.plan_evaluation import subgroups
from federation.releases import decode_stats, encoded_bounds, stats_vector
from site_agent.anonymity import band_edges, generalise
from survival.schema import FeatureSchema, NumericFeature

pytestmark = pytest.mark.unit

PLAN = """
name = "receptors"
[time_grid]
cuts = [1.0, 2.0]
[[features]]
kind = "numeric"
name = "progrec"
min = 0.0
max = 3000.0
{transform}
[[features]]
kind = "numeric"
name = "lab"
min = 0.0
max = 50.0
required = false
impute = 4.0
{transform}
[evaluation]
subgroups = ["progrec"]
cuts = {{ progrec = [20.0, 200.0] }}
"""


def _schema(transform: str) -> FeatureSchema:
    return parse_plan(PLAN.format(transform=transform)).feature_schema


def test_the_model_column_is_log1p_of_the_clipped_value_and_the_bounds_follow() -> None:
    schema = _schema('transform = "log1p"')
    columns = {"progrec": [0.0, 99.0, 5000.0, -3.0], "lab": [1.0, None, 60.0, 0.0]}
    raw = schema.raw_matrix(columns)
    np.testing.assert_allclose(raw[:, 0], np.log1p([0.0, 99.0, 3000.0, 0.0]))  # clipped first
    np.testing.assert_allclose(raw[:, 1], np.log1p([1.0, 4.0, 50.0, 0.0]))  # imputed in units
    np.testing.assert_array_equal(raw[:, 2], [0.0, 1.0, 0.0, 0.0])  # the missing flag is not
    low, high = encoded_bounds(schema)
    np.testing.assert_allclose(low, [0.0, 0.0, 0.0])
    np.testing.assert_allclose(high, [np.log1p(3000.0), np.log1p(50.0), 1.0])
    plain = _schema("").raw_matrix(columns)
    np.testing.assert_allclose(plain[:, 0], [0.0, 99.0, 3000.0, 0.0])


def test_a_log_of_a_possibly_negative_measurement_is_refused_with_the_cause() -> None:
    with pytest.raises(ValidationError, match="log1p needs min >= 0"):
        NumericFeature(name="delta", min=-5.0, max=5.0, transform="log1p")


def test_a_plan_without_a_transform_keeps_its_hash_and_one_with_it_does_not() -> None:
    plain = parse_plan(PLAN.format(transform=""))
    explicit = parse_plan(PLAN.format(transform='transform = "none"'))
    logged = parse_plan(PLAN.format(transform='transform = "log1p"'))
    assert "transform" not in plain.canonical_json()
    assert explicit.sha256() == plain.sha256()
    assert logged.sha256() != plain.sha256()


@given(st.lists(st.floats(0.0, 3000.0), min_size=1, max_size=40))
def test_subgroup_bands_and_k_anonymity_bands_read_the_same_rows_either_way(
    values: list[float],
) -> None:
    """Cuts and band edges are in the column's units; with the transform the same rows fall in
    the same band (the log is monotone), and a generalised value stays inside its band."""
    columns = {"progrec": values, "lab": [1.0] * len(values)}
    bands = []
    for transform in ("", 'transform = "log1p"'):
        plan = parse_plan(PLAN.format(transform=transform))
        (group,) = subgroups(plan.evaluation, plan.feature_schema)
        bands.append(group.assign(plan.feature_schema.raw_matrix(columns)))
    np.testing.assert_array_equal(bands[0], bands[1])

    schema = _schema('transform = "log1p"')
    layer = KAnonymityPlan(k=2, quasi_identifiers=["progrec"], bands=4)
    raw = schema.raw_matrix(columns)
    general = generalise(schema, layer, raw)[:, 0]
    edges = schema.features[0].encode(band_edges(schema.features[0], layer))  # type: ignore[union-attr]
    band = np.clip(np.searchsorted(edges, raw[:, 0], side="right") - 1, 0, edges.size - 2)
    assert np.all((edges[band] <= general) & (general <= edges[band + 1]))


def test_the_consortium_standardisation_is_in_the_encoded_units() -> None:
    """decode_stats maps the summed statistics back with the encoded bounds: a mean of log
    values, not of the raw ones."""
    schema = FeatureSchema(
        features=[NumericFeature(name="progrec", min=0.0, max=3000.0, transform="log1p")]
    )
    x = schema.raw_matrix({"progrec": [10.0, 100.0, 1000.0, 30.0]})
    total = stats_vector(x, np.array([3.0, 1.0]), np.array([4.0, 2.0]), schema)
    stats = decode_stats(np.asarray(total, dtype=float), schema, 2)
    assert stats.standardization.means[0] == pytest.approx(np.log1p([10, 100, 1000, 30]).mean())
