"""Feature schema: bad rows are counted by reason (never raise), encoding, standardisation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from survival.schema import (
    CategoricalFeature,
    Feature,
    FeatureSchema,
    NumericFeature,
    Standardization,
)

pytestmark = pytest.mark.unit

SCHEMA = FeatureSchema(
    features=[
        NumericFeature(name="age", min=40, max=110),
        NumericFeature(name="creatinine", min=0.2, max=15, required=False, impute=1.0),
        CategoricalFeature(name="sex", levels=["F", "M"]),
        CategoricalFeature(name="stage", levels=["1", "2", "3"], required=False),
    ]
)


def test_encoded_names() -> None:
    assert SCHEMA.encoded_names() == [
        "age",
        "creatinine",
        "creatinine:missing",
        "sex=M",
        "stage=2",
        "stage=3",
        "stage:missing",
    ]


EXCLUDING = FeatureSchema(
    features=[
        NumericFeature(name="age", min=40, max=110, out_of_bounds="exclude"),
        NumericFeature(
            name="creatinine", min=0.2, max=15, required=False, impute=1.0, out_of_bounds="exclude"
        ),
        CategoricalFeature(name="sex", levels=["F", "M"]),
        CategoricalFeature(name="stage", levels=["1", "2", "3"], required=False),
    ]
)


def test_out_of_bounds_values_are_clipped_and_counted_by_default() -> None:
    columns = {"age": [39.9, 120, 60], "creatinine": [0.09999, 20.0, None], "sex": ["F"] * 3}
    result = SCHEMA.validate_rows(columns)
    assert result.valid.all() and result.reasons == {}
    assert result.clipped == {"age": 2, "creatinine": 2}
    matrix = SCHEMA.raw_matrix(columns, result.valid)
    np.testing.assert_array_equal(matrix[:, 0], [40.0, 110.0, 60.0])
    np.testing.assert_array_equal(matrix[:, 1], [0.2, 15.0, 1.0])


def test_bad_rows_counted_by_reason() -> None:
    columns = {
        "age": [50, "x", 120, None, 60.5, 39.9, "70"],
        "creatinine": [1.2, None, 2.0, 2.0, "abc", 3.0, 20.0],
        "sex": ["F", "M", "M", "F", "Q", "F", "M"],
        "stage": [None, 1, 2.0, "3", "3", "4", ""],
    }
    result = EXCLUDING.validate_rows(columns)
    assert result.valid.tolist() == [True, False, False, False, False, False, False]
    assert result.reasons == {
        "age: not a number": 1,
        "age: out of bounds [40, 110]": 2,
        "age: missing": 1,
        "creatinine: not a number": 1,
        "creatinine: out of bounds [0.2, 15]": 1,
        "sex: unknown level": 1,
        "stage: unknown level": 1,
    }
    assert result.n_valid == 1 and result.n_invalid == 6


def test_absent_columns() -> None:
    result = SCHEMA.validate_rows({"age": [50, 60], "sex": ["F", "M"]})
    assert result.valid.all()  # optional columns may be absent entirely
    result = SCHEMA.validate_rows({"age": [50, 60]})
    assert not result.valid.any()
    assert result.reasons == {"sex: column absent": 2}


def test_imputation_and_indicators() -> None:
    columns = {
        "age": [50.0, 200.0, 70.0],
        "creatinine": [float("nan"), 1.0, 2.5],
        "sex": ["M", "F", "F"],
        "stage": ["", "1", 3],
    }
    result = EXCLUDING.validate_rows(columns)
    assert result.valid.tolist() == [True, False, True]
    matrix = EXCLUDING.raw_matrix(columns, result.valid)
    assert matrix.dtype == np.float64
    np.testing.assert_array_equal(
        matrix,
        [
            # age, creatinine (imputed 1.0), missing flag, sex=M, stage=2, stage=3, stage missing
            [50.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0],
            [70.0, 2.5, 0.0, 0.0, 0.0, 1.0, 0.0],
        ],
    )


def test_raw_matrix_refuses_unvalidated_rows() -> None:
    with pytest.raises(ValueError, match="age: rows that fail validate_rows"):
        SCHEMA.raw_matrix({"age": ["x"], "sex": ["F"]})


def test_pandas_frame_with_categorical_dtype() -> None:
    import pandas as pd  # the dev extra has it; survival itself never needs it

    frame = pd.DataFrame(
        {
            "age": [50.0, 70.0],
            "creatinine": [np.nan, 2.0],
            "sex": pd.Categorical(["F", "M"]),
            "stage": pd.array([pd.NA, "2"], dtype="string"),
        }
    )
    result = SCHEMA.validate_rows(frame)
    assert result.valid.all()
    np.testing.assert_array_equal(
        SCHEMA.raw_matrix(frame, result.valid),
        [[50.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0], [70.0, 2.0, 0.0, 1.0, 1.0, 0.0, 0.0]],
    )


_VALUES = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.text(max_size=8),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_VALUES, _VALUES, _VALUES, _VALUES), max_size=12))
def test_validation_never_raises_and_valid_rows_encode(rows: list[tuple[object, ...]]) -> None:
    columns = {name: [row[i] for row in rows] for i, name in enumerate(SCHEMA.names)}
    result = SCHEMA.validate_rows(columns)
    assert result.valid.shape == (len(rows),)
    assert sum(result.reasons.values()) >= result.n_invalid
    matrix = SCHEMA.raw_matrix(columns, result.valid)
    assert matrix.shape == (result.n_valid, len(SCHEMA.encoded_names()))
    assert np.isfinite(matrix).all()
    assert (matrix[:, 0] >= 40).all() and (matrix[:, 0] <= 110).all()


def test_standardization_from_moments_equals_from_matrix() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(500, 4))
    x[:, 3] = 7.0  # constant column → std 1, not a division by zero
    direct = Standardization.from_matrix(x)
    # Two sites' totals, summed: what the federation supplies.
    a, b = x[:200], x[200:]
    merged = Standardization.from_moments(500, a.sum(0) + b.sum(0), (a * a).sum(0) + (b * b).sum(0))
    np.testing.assert_allclose(merged.means, direct.means, rtol=1e-12)
    np.testing.assert_allclose(merged.stds, direct.stds, rtol=1e-9)
    np.testing.assert_allclose(direct.means, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(direct.stds[:3], x.std(0)[:3], rtol=1e-9)
    assert direct.stds[3] == 1.0
    scaled = direct.apply(x)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled[:, :3].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(scaled[:, :3].std(0), 1.0, atol=1e-5)


def test_standardization_survives_noisy_moments() -> None:
    # DP noise can make Σx² / n < mean²: the column gets std 1 instead of NaN.
    standard = Standardization.from_moments(10.0, [10.0, 5.0], [9.0, 10.0])
    assert standard.stds[0] == 1.0
    assert standard.stds[1] == pytest.approx(np.sqrt(0.75))
    with pytest.raises(ValueError, match="expected"):
        standard.apply(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="count must be positive"):
        Standardization.from_moments(0, [1.0], [1.0])


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ([{"kind": "numeric", "name": "age", "min": 110, "max": 40}], "min .110.0. must be below"),
        ([{"kind": "categorical", "name": "sex", "levels": []}], "at least two levels"),
        ([{"kind": "categorical", "name": "sex", "levels": ["F", "F"]}], "duplicate levels"),
        (
            [
                {"kind": "numeric", "name": "age", "min": 0, "max": 1},
                {"kind": "categorical", "name": "age", "levels": ["a", "b"]},
            ],
            "duplicate feature names \\['age'\\]",
        ),
        (
            [{"kind": "numeric", "name": "cr", "min": 0, "max": 1, "required": False}],
            "needs `impute`",
        ),
        (
            [{"kind": "numeric", "name": "cr", "min": 0, "max": 1, "required": False, "impute": 3}],
            "outside",
        ),
        ([{"kind": "ordinal", "name": "x"}], "ordinal"),
        ([], "at least 1"),
    ],
)
def test_bad_schema_gives_one_clear_error(features: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        FeatureSchema.model_validate({"features": features})
    assert info.value.error_count() == 1


def test_schema_round_trips_through_json() -> None:
    again = FeatureSchema.model_validate_json(SCHEMA.model_dump_json())
    assert again == SCHEMA
    feature = TypeAdapter(Feature).validate_python(
        {"kind": "categorical", "name": "sex", "levels": ["F", "M"]}
    )
    assert isinstance(feature, CategoricalFeature)
