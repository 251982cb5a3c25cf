"""FLCHAIN demo data: loader, public schema and grid, fixed split, and a splitter into hospitals.

FLCHAIN (Dispenzieri et al. 2012; 7874 Olmsted County residents aged ≥ 50, serum free light chains
and all-cause mortality) is read from scikit-survival's bundled copy; pandas and scikit-survival
come from the optional `data` extra and are imported lazily, so the rest of `survival` works
without them. `chapter` (the ICD chapter of the cause of death) is dropped: it is only known for
patients who died, so it leaks the outcome.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from survival.schema import CategoricalFeature, FeatureSchema, NumericFeature
from survival.timegrid import TimeGrid

if TYPE_CHECKING:
    import pandas as pd

TIME = "time"
EVENT = "event"

FLCHAIN_SCHEMA = FeatureSchema(
    features=[
        # The cohort is aged ≥ 50; a wider clinical range keeps the schema usable for other sites.
        NumericFeature(name="age", min=40.0, max=110.0),
        CategoricalFeature(name="sex", levels=["F", "M"]),
        # Serum free light chains, mg/dL (normal kappa 0.33–1.94, lambda 0.57–2.63).
        NumericFeature(name="kappa", min=0.0, max=30.0),
        NumericFeature(name="lambda", min=0.0, max=30.0),
        CategoricalFeature(name="flc.grp", levels=[str(g) for g in range(1, 11)]),
        # Serum creatinine, mg/dL; missing for ~17% of patients: imputed at the normal 1.0.
        NumericFeature(name="creatinine", min=0.2, max=15.0, required=False, impute=1.0),
        CategoricalFeature(name="mgus", levels=["no", "yes"]),
        CategoricalFeature(name="sample.yr", levels=[str(y) for y in range(1995, 2004)]),
    ]
)

_CATEGORICAL = [f.name for f in FLCHAIN_SCHEMA.features if isinstance(f, CategoricalFeature)]

# Hospital-specific spellings of each consortium column, so site-side schema mapping is real.
_SYNONYMS: dict[str, list[str]] = {
    "age": ["age_years", "AGE", "Age at sample", "patient_age", "age_at_draw"],
    "sex": ["gender", "SEX", "Sex", "patient_sex", "sex_code"],
    "kappa": ["kappa_flc", "KAPPA_FLC", "Kappa FLC (mg/dL)", "flc_kappa", "kappa_mg_dl"],
    "lambda": ["lambda_flc", "LAMBDA_FLC", "Lambda FLC (mg/dL)", "flc_lambda", "lambda_mg_dl"],
    "flc.grp": ["flc_group", "FLC_DECILE", "FLC group", "flc_grp", "flc_decile"],
    "creatinine": ["creat", "CREATININE", "Creatinine (mg/dL)", "serum_creatinine", "creat_mg_dl"],
    "mgus": ["mgus_dx", "MGUS", "MGUS diagnosis", "has_mgus", "mgus_flag"],
    "sample.yr": ["sample_year", "SAMPLE_YR", "Year of sample", "draw_year", "sample_yr"],
    TIME: ["futime_days", "FOLLOWUP_DAYS", "Follow-up (days)", "days_observed", "fu_days"],
    EVENT: ["died", "DEATH", "Deceased", "vital_status", "death_flag"],
}


class DataExtraMissing(ImportError):
    """pandas / scikit-survival are not installed."""


def _require_data_extra() -> tuple[Any, Any]:
    try:
        import pandas
        import sksurv.datasets
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise DataExtraMissing(
            f"the FLCHAIN demo data needs pandas and scikit-survival ({exc.name} is missing): "
            "pip install 'concordia[data]'"
        ) from exc
    return pandas, sksurv.datasets


def load_flchain() -> pd.DataFrame:
    """FLCHAIN without `chapter`: the schema's columns (categoricals as str, creatinine with NaN),
    plus `time` (follow-up days, float) and `event` (death, int 0/1)."""
    _, datasets = _require_data_extra()
    x, y = datasets.load_flchain()
    frame = x.drop(columns=["chapter"]).copy()
    for name in _CATEGORICAL:
        frame[name] = frame[name].astype(str).astype(object)
    frame[TIME] = np.asarray(y["futime"], dtype=np.float64)
    frame[EVENT] = np.asarray(y["death"], dtype=np.int64)
    columns = [*FLCHAIN_SCHEMA.names, TIME, EVENT]
    result: pd.DataFrame = frame[columns].reset_index(drop=True)
    return result


def default_time_grid() -> TimeGrid:
    """20 equal intervals of 250 days up to 5000 days (~99th percentile of FLCHAIN follow-up)."""
    return TimeGrid.equal_width(5000.0, 20)


def fixed_split(
    df: pd.DataFrame, test_fraction: float = 0.2, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deterministic train/test split stratified on `event`; both re-indexed from 0."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    events = df[EVENT].to_numpy()
    test_rows: list[np.ndarray] = []
    for label in np.unique(events):
        rows = np.flatnonzero(events == label)
        n_test = round(test_fraction * rows.size)
        test_rows.append(rng.permutation(rows)[:n_test])
    is_test = np.zeros(len(df), dtype=bool)
    is_test[np.concatenate(test_rows)] = True
    return df[~is_test].reset_index(drop=True), df[is_test].reset_index(drop=True)


def split_hospitals(
    df: pd.DataFrame,
    k: int,
    method: Literal["age", "dirichlet"],
    seed: int = 0,
    alpha: float = 0.5,
) -> list[pd.DataFrame]:
    """Partition `df` into k hospitals (each keeps `df`'s index, so the partition is checkable).

    - `age`: contiguous age-quantile bands of equal size (ties broken by a seeded shuffle), so
      hospitals differ in case mix the way a geriatric and a general clinic do.
    - `dirichlet`: label skew; each outcome class is spread over hospitals in Dirichlet(alpha)
      proportions (smaller alpha, more skew). Draws are repeated (deterministically) until every
      hospital has at least a fifth of the average size.
    """
    n = len(df)
    if k < 1 or k > n:
        raise ValueError(f"k must lie in [1, {n}], got {k}")
    rng = np.random.default_rng(seed)
    if method == "age":
        order = np.lexsort((rng.permutation(n), df["age"].to_numpy(dtype=np.float64)))
        parts = np.array_split(order, k)
    elif method == "dirichlet":
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        parts = _dirichlet_parts(df[EVENT].to_numpy(), k, alpha, rng)
    else:
        raise ValueError(f"method must be 'age' or 'dirichlet', got {method!r}")
    return [df.iloc[np.sort(part)] for part in parts]


def _dirichlet_parts(
    labels: np.ndarray, k: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    minimum = math.ceil(0.2 * labels.size / k)
    for _ in range(1000):
        buckets: list[list[np.ndarray]] = [[] for _ in range(k)]
        for label in np.unique(labels):
            rows = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(k, alpha))
            bounds = np.round(np.cumsum(shares) * rows.size).astype(int)[:-1]
            for bucket, chunk in zip(buckets, np.split(rows, bounds), strict=True):
                bucket.append(chunk)
        parts = [np.concatenate(bucket) for bucket in buckets]
        if min(part.size for part in parts) >= minimum:
            return parts
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) split gives {k} hospitals of ≥ {minimum} patients; "
        "use a larger alpha or fewer hospitals"
    )


def hospital_column_names(k: int) -> list[dict[str, str]]:
    """For each hospital, consortium column name → that hospital's own column name."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    mappings = []
    for hospital in range(k):
        style, cycle = hospital % 5, hospital // 5
        suffix = "" if cycle == 0 else f"_{cycle + 1}"
        mappings.append({name: spellings[style] + suffix for name, spellings in _SYNONYMS.items()})
    return mappings


def write_hospital_csvs(
    out_dir: Path | str,
    df_train: pd.DataFrame,
    k: int,
    method: Literal["age", "dirichlet"],
    seed: int = 0,
    alpha: float = 0.5,
) -> list[Path]:
    """Write `hospital-<i>.csv` (i = 1..k) under `out_dir`, each with its own column names."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    parts = split_hospitals(df_train, k, method, seed=seed, alpha=alpha)
    for i, (part, names) in enumerate(zip(parts, hospital_column_names(k), strict=True), start=1):
        path = out / f"hospital-{i}.csv"
        part.rename(columns=names).to_csv(path, index=False)
        paths.append(path)
    return paths


def read_hospital_csv(path: Path | str, names: dict[str, str]) -> pd.DataFrame:
    """Read one hospital CSV back under consortium names (a test and demo helper; the site agent
    has its own configured mapping)."""
    pandas, _ = _require_data_extra()
    frame: pd.DataFrame = pandas.read_csv(path, dtype=object, keep_default_na=True)
    inverse = {local: consortium for consortium, local in names.items()}
    missing = sorted(set(inverse) - set(frame.columns))
    if missing:
        raise ValueError(f"{path}: columns {missing} not found")
    return frame.rename(columns=inverse)[list(names)]
