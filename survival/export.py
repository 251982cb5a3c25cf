"""Use an exported model (`fedctl export`) from Python with one import, and no federation code.

An analyst who receives `model.pt` + `model_card.json` should not have to rebuild the plan, the
encoding and the consortium's standardisation by hand: every one of those steps is a chance to
feed the model features that differ from the ones it was trained on, and a wrong prediction looks
exactly like a right one. So this module replays the trainer's own path (`survival.schema` to
encode, the card's consortium `Standardization`, `survival.models` + `survival.loss` to predict)
and refuses input that training would not have encoded the same way.

It reads only the parts of the card's run plan that prediction needs (features, time grid, model,
time unit) with survival's own types, so `survival` still imports nothing of the federation; and
torch is imported inside the functions that need it, so `import survival.export` stays cheap.

    from survival.export import load_model
    model = load_model("export/")
    model.predict_survival([{"age": 63, "sex": "F", "creatinine": 1.1}])
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from survival.schema import FeatureSchema, NumericFeature, Standardization
from survival.spec import ModelSpec
from survival.timegrid import TimeGrid

__all__ = ["ExportError", "PredictionInputError", "RowProblem", "SurvivalModel", "load_model"]

MODEL_FILE = "model.pt"
CARD_FILE = "model_card.json"
_SHOWN_PROBLEMS = 5


class ExportError(ValueError):
    """The export folder is incomplete or its files do not describe the same model."""


@dataclass(frozen=True)
class RowProblem:
    """One reason one input row cannot be predicted: its position, the feature, what is wrong."""

    row: int
    feature: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.feature}: {self.reason}"


class PredictionInputError(ValueError):
    """Input rows that the training encoding would not accept as they are.

    Raised rather than skipping or clipping the rows: a caller asking for one patient's curve must
    not silently get another patient's (a clipped creatinine) or a shorter array. `problems` lists
    every (row, feature, reason); the message names the first few.
    """

    def __init__(self, problems: Sequence[RowProblem]) -> None:
        self.problems = list(problems)
        shown = "; ".join(str(p) for p in self.problems[:_SHOWN_PROBLEMS])
        more = len(self.problems) - _SHOWN_PROBLEMS
        suffix = f"; and {more} more" if more > 0 else ""
        super().__init__(f"cannot predict these rows: {shown}{suffix}")

    @property
    def row(self) -> int:
        return self.problems[0].row

    @property
    def feature(self) -> str:
        return self.problems[0].feature


@dataclass
class SurvivalModel:
    """The consortium's model with the encoding it was trained under.

    Predictions are at the time grid's cut points (`times`), in the plan's `time_unit`: a
    discrete-time model knows nothing between cuts or past the last one (the horizon).
    """

    feature_schema: FeatureSchema
    time_grid: TimeGrid
    time_unit: str
    spec: ModelSpec
    standardization: Standardization
    card: dict[str, Any] = field(repr=False)
    _model: Any = field(repr=False)

    @property
    def times(self) -> np.ndarray:
        """The cut points c_0 < … < c_{K-1}; column k of every curve is S(c_k)."""
        return np.asarray(self.time_grid.cuts, dtype=np.float64)

    @property
    def feature_names(self) -> list[str]:
        """The encoded (design-matrix) column names, the keys of `hazard_ratios`."""
        return self.feature_schema.encoded_names()

    # ------------------------------------------------------------------ predictions
    def predict_survival(self, rows: Any) -> np.ndarray:
        """S(c_k | x): probability of being event-free at each cut, shape [n, K], float64.

        Each row is non-increasing and in [0, 1] (S_k = Π_{j≤k} (1 − h_j), `survival.loss`).
        """
        return self._curves_and_risk(rows)[0]

    def predict_risk(self, rows: Any) -> np.ndarray:
        """Risk score [n], higher = worse: Σ_k (1 − S_k), the score the run's C-index used.

        It is the expected number of cuts at which the patient is no longer event-free: a unitless
        ranking score (the trainer's `survival.loss.risk_score` with equal weights), to compare
        between patients of the same model, not against a threshold or across runs.
        """
        return self._curves_and_risk(rows)[1]

    def predict_median_survival(self, rows: Any) -> np.ndarray:
        """Median survival time [n], in `time_unit`: the first cut where S ≤ 0.5.

        `inf` when S stays above 0.5 up to the horizon: the median is then "beyond the last cut",
        not unknown and not the horizon itself. Being a cut, it is rounded up to the grid (the
        median lies in the interval that ends there).
        """
        surv = self.predict_survival(rows)
        reached = surv <= 0.5
        first = np.argmax(reached, axis=1)
        median: np.ndarray = np.where(reached.any(axis=1), self.times[first], np.inf)
        return median

    def hazard_ratios(self, *, per_unit: bool = False) -> dict[str, float]:
        """exp(beta) per encoded feature of the `linear` model.

        By default per one standard deviation of the feature in the consortium (the model is fitted
        on standardised features: a ratio of 1.5 for `age` means the hazard odds are 1.5 times
        higher per consortium SD of age, all else equal). `per_unit=True` gives exp(beta / sd),
        per unit of the raw value (of log(1 + value) for a `transform = "log1p"` feature, which
        the model sees as its log); for a dummy `sex=M` that is the ratio of level M against the
        reference level, and for a `:missing` indicator, missing against recorded. The linear model
        is a logistic-hazard model, so these are hazard-odds ratios, close to Cox hazard ratios
        while the per-interval hazards are small. The MLP has no such ratios: it raises.

        Their 95 % intervals from the DP noise of training need the plan's noise model, which
        lives with the federation: `federation.hazard_intervals.hazard_ratio_intervals(model)`
        (docs/using-the-model.md).
        """
        if self.spec.kind != "linear":
            raise TypeError(
                "hazard ratios exist only for the linear model; this export is a"
                f" {self.spec.kind!r} model, whose feature effects vary with the patient and"
                " the time: compare predict_survival curves instead"
            )
        beta = self._model.linear.weight.detach().double().reshape(-1).numpy()
        if per_unit:
            beta = beta / np.asarray(self.standardization.stds)
        return {name: float(math.exp(b)) for name, b in zip(self.feature_names, beta, strict=True)}

    # ------------------------------------------------------------------ input
    def design_matrix(self, rows: Any) -> np.ndarray:
        """The raw (unstandardised) design matrix [n, p] of `rows`, after the strict checks."""
        columns = _as_columns(rows)
        schema = self.feature_schema
        if not any(len(values) for values in columns.values()):
            return np.zeros((0, schema.n_encoded))  # no patients: empty predictions, not an error
        problems = _problems(schema, columns)
        if problems:
            raise PredictionInputError(problems)
        return schema.raw_matrix(columns)

    def _curves_and_risk(self, rows: Any) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from survival.loss import risk_score, survival_curve

        x = self.standardization.apply(self.design_matrix(rows))
        with torch.no_grad():
            logits = self._model(torch.as_tensor(x))
            surv = survival_curve(logits).numpy().astype(np.float64)
            risk = risk_score(logits).numpy().astype(np.float64)
        return surv, risk


# ---------------------------------------------------------------------- loading
def load_model(path: str | Path) -> SurvivalModel:
    """The model of an export folder (or of its `model_card.json`; `model.pt` sits beside it).

    Raises `ExportError` when a file is missing, the card has no consortium standardisation (a run
    that never finished its statistics stage), or the weights do not fit the card's plan.
    """
    import torch

    from survival.models import build_model

    folder = Path(path)
    card_path = folder if folder.is_file() else folder / CARD_FILE
    model_path = card_path.parent / MODEL_FILE
    for required in (card_path, model_path):
        if not required.is_file():
            raise ExportError(f"{required}: no such file (expected the output of `fedctl export`)")
    card = json.loads(card_path.read_text())
    plan = card.get("plan")
    if not isinstance(plan, dict):
        raise ExportError(f"{card_path}: no run plan in the model card")
    schema = FeatureSchema(features=plan["features"])
    grid = TimeGrid.model_validate(plan["time_grid"])
    spec = ModelSpec.model_validate(plan.get("model", {}))
    moments = card.get("standardization")
    if moments is None:
        raise ExportError(
            f"{card_path}: the card has no consortium standardisation (the run ended before its"
            " statistics stage), so rows cannot be put on the scale the model was trained on"
        )
    standardization = Standardization(means=moments["means"], stds=moments["stds"])
    if len(standardization.means) != schema.n_encoded:
        raise ExportError(
            f"{card_path}: standardisation of {len(standardization.means)} columns, the features"
            f" encode to {schema.n_encoded}"
        )
    model = build_model(spec, schema.n_encoded, grid.n_intervals)
    state = torch.load(model_path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ExportError(f"{model_path}: weights do not fit the card's plan: {exc}") from None
    model.eval()  # dropout off: a prediction must not be random
    return SurvivalModel(
        feature_schema=schema,
        time_grid=grid,
        time_unit=str(plan.get("time_unit", "days")),
        spec=spec,
        standardization=standardization,
        card=card,
        _model=model,
    )


# ---------------------------------------------------------------------- input checks
def _as_columns(rows: Any) -> dict[str, list[Any]]:
    """Rows (a list of dicts, or a pandas DataFrame) as columns, without importing pandas.

    A key absent from every row stays absent (an optional feature is then imputed); a key absent
    from some rows is a missing value in those rows. Keys that are not features are ignored.
    """
    if hasattr(rows, "columns") and hasattr(rows, "to_dict"):  # a DataFrame, by duck typing
        return {str(name): list(rows[name]) for name in rows.columns}
    if isinstance(rows, Mapping):
        raise TypeError("rows must be a list of dicts (one per patient) or a DataFrame")
    records = list(rows)
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise TypeError(f"row {i} is a {type(record).__name__}, expected a dict")
    keys = dict.fromkeys(key for record in records for key in record)
    return {str(key): [record.get(key) for record in records] for key in keys}


def _problems(schema: FeatureSchema, columns: dict[str, list[Any]]) -> list[RowProblem]:
    """Every (row, feature) that training's `validate_rows` rejects or clips.

    The whole input goes through `validate_rows` once; only when something is wrong are rows
    checked one by one, to name them. Clipping is an error here although training clips: training
    needs every row it can get, while a prediction for a value outside the clinical range the
    consortium agreed on would be a prediction for another value.
    """
    check = schema.validate_rows(columns)
    if check.n_invalid == 0 and not check.clipped:
        return []
    n = len(next(iter(columns.values()))) if columns else 0
    problems: list[RowProblem] = []
    for i, one in _single_rows(columns, n):
        result = schema.validate_rows(one)
        for reason in result.reasons:
            feature, _, what = reason.partition(": ")
            problems.append(RowProblem(i, feature, what))
        for name in result.clipped:
            numeric = next(f for f in schema.features if f.name == name)
            assert isinstance(numeric, NumericFeature)  # only numeric features clip
            text = f"{one[name][0]!r} outside the range {numeric.bounds_text()}"
            problems.append(RowProblem(i, name, text))
    return problems


def _single_rows(
    columns: dict[str, list[Any]], n: int
) -> Iterator[tuple[int, dict[str, list[Any]]]]:
    for i in range(n):
        yield i, {key: [values[i]] for key, values in columns.items()}
