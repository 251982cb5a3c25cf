"""`survival.export.load_model` on a real export: the files `fedctl export` writes, from a vector.

The export is made by `fedctl.runs.write_export` itself (from an ExportRun answer built in the
test, no server), and predictions are compared with the trainer's own path,
`site_agent.model.predict`, on the same vector and standardisation.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedctl.runs import write_export
from federation.plan import RunPlan
from federation.vectors import encode_vector
from federation.wire.v1 import admin_pb2
from site_agent.model import predict
from survival.export import PredictionInputError, SurvivalModel, load_model
from survival.spec import baseline_logits, initial_parameters, parameter_count

pytestmark = pytest.mark.unit

FEATURES: list[dict[str, Any]] = [
    {"kind": "numeric", "name": "age", "min": 18, "max": 100},
    {"kind": "categorical", "name": "sex", "levels": ["F", "M"]},
    {"kind": "numeric", "name": "creatinine", "min": 0.1, "max": 15, "required": False,
     "impute": 1.0},
]  # fmt: skip
ENCODED = ["age", "sex=M", "creatinine", "creatinine:missing"]
MEANS = [60.0, 0.5, 1.2, 0.1]
STDS = [10.0, 0.5, 0.4, 0.3]
BETA = [0.6, 0.3, 0.4, 0.1]  # older, male, higher creatinine: worse

PATIENTS: list[dict[str, Any]] = [
    {"age": 45, "sex": "F", "creatinine": 0.9},
    {"age": 60, "sex": "M", "creatinine": 1.2},
    {"age": 80, "sex": "M", "creatinine": 2.5},
]


def export_plan(kind: str, name: str = "export", **fields: Any) -> RunPlan:
    """The plan of a crafted export: these features, a linear or small MLP model, in days
    (`fields`: further top-level plan tables, e.g. training or privacy)."""
    model = {"kind": "linear"} if kind == "linear" else {"kind": "mlp", "hidden": [8]}
    return RunPlan.model_validate(
        {
            "name": f"{name}-{kind}",
            "features": FEATURES,
            "time_grid": {"cuts": [90.0, 180.0, 365.0, 730.0, 1095.0]},
            "model": model,
            "time_unit": "days",
            **fields,
        }
    )


def _vector(plan: RunPlan) -> np.ndarray:
    k = plan.time_grid.n_intervals
    base = baseline_logits(np.array([30.0, 25, 30, 30, 20]), np.array([1000.0, 950, 900, 800, 700]))
    if plan.model.kind == "linear":
        return np.concatenate([base, BETA]).astype(np.float32)
    vec = initial_parameters(plan.model, len(ENCODED), k, seed=3, baseline=base)
    rng = np.random.default_rng(0)
    n_out = k * plan.model.hidden[-1] + k  # the output layer starts at zero: give it an effect
    vec[-n_out:] = rng.normal(0.0, 0.3, n_out).astype(np.float32)
    assert vec.size == parameter_count(plan.model, len(ENCODED), k)
    return vec


def _export(tmp_path: Path, kind: str, standardization: Any = "default") -> tuple[Path, RunPlan]:
    plan = export_plan(kind)
    run_id = f"run-{kind}"
    card = {
        "run_id": run_id,
        "plan": plan.model_dump(mode="json"),
        "plan_sha256": plan.sha256(),
        "round": 10,
        "feature_names": plan.feature_schema.encoded_names(),
        "standardization": {"means": MEANS, "stds": STDS}
        if standardization == "default"
        else standardization,
    }
    response = admin_pb2.ExportRunResponse(
        run_id=run_id,
        round=10,
        global_vector=encode_vector(_vector(plan)),
        model_card_json=json.dumps(card, sort_keys=True),
    )
    out = tmp_path / kind
    write_export(response, out)
    return out, plan


@pytest.fixture(params=["linear", "mlp"])
def exported(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[SurvivalModel, RunPlan]:
    folder, plan = _export(tmp_path, request.param)
    return load_model(folder), plan


def test_curves_match_the_trainers_prediction(exported: tuple[SurvivalModel, RunPlan]) -> None:
    model, plan = exported
    surv = model.predict_survival(PATIENTS)
    assert surv.shape == (3, plan.time_grid.n_intervals)
    assert np.all((surv >= 0) & (surv <= 1))
    assert np.all(np.diff(surv, axis=1) <= 0)
    columns = {name: [p[name] for p in PATIENTS] for name in ("age", "sex", "creatinine")}
    raw = plan.feature_schema.raw_matrix(columns)
    expected_surv, expected_risk = predict(plan, _vector(plan), raw, MEANS, STDS)
    np.testing.assert_allclose(surv, expected_surv, rtol=1e-6)
    np.testing.assert_allclose(model.predict_risk(PATIENTS), expected_risk, rtol=1e-6)
    np.testing.assert_array_equal(model.times, plan.time_grid.cuts)
    assert model.time_unit == "days"
    assert model.feature_schema.encoded_names() == ENCODED


def test_a_dataframe_gives_the_same_answer(exported: tuple[SurvivalModel, RunPlan]) -> None:
    import pandas as pd  # the data extra, which the dev install always has

    model, _ = exported
    np.testing.assert_array_equal(
        model.predict_survival(pd.DataFrame(PATIENTS)), model.predict_survival(PATIENTS)
    )


def test_load_from_the_card_path(tmp_path: Path) -> None:
    folder, _ = _export(tmp_path, "linear")
    a = load_model(folder / "model_card.json").predict_survival(PATIENTS)
    np.testing.assert_array_equal(a, load_model(folder).predict_survival(PATIENTS))


def test_risk_orders_patients_as_the_coefficients_say(tmp_path: Path) -> None:
    model = load_model(_export(tmp_path, "linear")[0])
    risk = model.predict_risk(PATIENTS)
    assert risk[0] < risk[1] < risk[2]
    surv = model.predict_survival(PATIENTS)
    assert np.all(surv[0] >= surv[1]) and np.all(surv[1] >= surv[2])


def test_median_is_the_first_cut_at_or_below_half(exported: tuple[SurvivalModel, RunPlan]) -> None:
    model, _ = exported
    patients = [*PATIENTS, {"age": 100, "sex": "M", "creatinine": 15}]
    surv, median = model.predict_survival(patients), model.predict_median_survival(patients)
    for curve, m in zip(surv, median, strict=True):
        below = np.flatnonzero(curve <= 0.5)
        assert m == (model.times[below[0]] if below.size else math.inf)
    assert math.isinf(median[0])  # a young woman's curve stays above 0.5 within three years


def test_hazard_ratios_of_the_linear_model(tmp_path: Path) -> None:
    model = load_model(_export(tmp_path, "linear")[0])
    ratios = model.hazard_ratios()
    assert list(ratios) == ENCODED
    for name, beta in zip(ENCODED, BETA, strict=True):
        assert ratios[name] == pytest.approx(math.exp(beta), rel=1e-6)
    per_unit = model.hazard_ratios(per_unit=True)
    assert per_unit["age"] == pytest.approx(math.exp(0.6 / 10.0), rel=1e-6)


def test_the_mlp_has_no_hazard_ratios(tmp_path: Path) -> None:
    model = load_model(_export(tmp_path, "mlp")[0])
    with pytest.raises(TypeError, match="only for the linear model"):
        model.hazard_ratios()


def test_missing_optional_value_is_imputed(exported: tuple[SurvivalModel, RunPlan]) -> None:
    model, plan = exported
    rows = [{"age": 70, "sex": "F"}, {"age": 70, "sex": "F", "creatinine": None}]
    raw = model.design_matrix(rows)
    np.testing.assert_array_equal(raw, [[70, 0, 1.0, 1.0], [70, 0, 1.0, 1.0]])
    expected, _ = predict(plan, _vector(plan), raw, MEANS, STDS)
    np.testing.assert_allclose(model.predict_survival(rows), expected, rtol=1e-6)


def test_missing_required_value_names_row_and_feature(tmp_path: Path) -> None:
    model = load_model(_export(tmp_path, "linear")[0])
    rows = [PATIENTS[0], {"sex": "F", "creatinine": 1.0}]
    with pytest.raises(PredictionInputError, match=r"row 1: age: missing") as info:
        model.predict_survival(rows)
    assert (info.value.row, info.value.feature) == (1, "age")


def test_out_of_range_value_names_row_and_feature(tmp_path: Path) -> None:
    model = load_model(_export(tmp_path, "linear")[0])
    rows = [PATIENTS[0], PATIENTS[1], {"age": 60, "sex": "M", "creatinine": 40}]
    with pytest.raises(PredictionInputError, match=r"row 2: creatinine: 40 outside .*0\.1, 15"):
        model.predict_risk(rows)
    with pytest.raises(PredictionInputError, match=r"row 0: sex: unknown level"):
        model.predict_risk([{"age": 60, "sex": "X"}])
    with pytest.raises(PredictionInputError, match=r"row 0: age: not a number"):
        model.predict_risk([{"age": "old", "sex": "F"}])


def test_every_problem_is_listed(tmp_path: Path) -> None:
    model = load_model(_export(tmp_path, "linear")[0])
    with pytest.raises(PredictionInputError) as info:
        model.predict_survival([{"sex": "F"}, PATIENTS[0], {"age": 10, "sex": "F"}])
    assert [(p.row, p.feature) for p in info.value.problems] == [(0, "age"), (2, "age")]


def test_no_rows_no_predictions(tmp_path: Path) -> None:
    model = load_model(_export(tmp_path, "linear")[0])
    assert model.predict_survival([]).shape == (0, 5)
    assert model.predict_median_survival([]).shape == (0,)


def test_an_export_without_standardisation_is_refused(tmp_path: Path) -> None:
    folder, _ = _export(tmp_path, "linear", standardization=None)
    with pytest.raises(ValueError, match="no consortium standardisation"):
        load_model(folder)
    with pytest.raises(ValueError, match="no such file"):
        load_model(tmp_path / "nowhere")


def test_import_does_not_load_torch() -> None:
    code = "import survival.export, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
