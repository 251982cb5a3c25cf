"""Helpers of `small_sites_bench.py`: the two small-site splits, their rows, plan text, and the
in-process models. (Running one federation is `_small_sites_fed.py`.)

- Splits. FLCHAIN: six sites of 40, 80, 120, 160, 200 and 250 patients drawn (seed 0, without
  replacement) from the fixed training split, each CSV with its own column names. GBSG2 (the
  copy bundled with lifelines): four sites by menopausal status × hormonal therapy from an
  80/20 split stratified on the event (seed 0), under a public schema and time grid defined
  here (clinical bounds, not the data's). Both score on their common test split.
- The rows a site trains on are its agent's (`training_rows`): a site below the plan's
  `training.holdout_min_site_rows` trains on all of them, a larger one on its training partition,
  keyed by a fixed split salt per (split, site). So the federation, each site alone, pooled DP
  and pooled Cox all train on the same rows, and repeats vary only the DP noise and sampling.
- Plans: the linear-model plan as TOML (`plan_text`), and `check_pending`, which names what a
  plan or site policy needs that this checkout lacks before any process starts.
- In-process models on the same rows: DP-SGD as `fedctl.demo.train_alone` trains a hospital alone
  (`train_dp`), and pooled non-private lifelines Cox PH (`fit_cox`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedctl.demo import Scores, score
from federation.plan import PlanError, RunPlan, parse_plan
from federation.plan_training import TrainingPlan
from site_agent.config import DataConfig, SitePolicy
from site_agent.data import load_local_data
from survival.data import (
    EVENT,
    FLCHAIN_SCHEMA,
    TIME,
    default_time_grid,
    fixed_split,
    hospital_column_names,
    load_flchain,
)
from survival.schema import CategoricalFeature, FeatureSchema, NumericFeature, Standardization

FLCHAIN_SIZES = (40, 80, 120, 160, 200, 250)

GBSG2_SCHEMA = FeatureSchema(
    features=[
        # Public clinical ranges of the German Breast Cancer Study Group 2 trial's variables.
        NumericFeature(name="age", min=20.0, max=90.0),  # years
        NumericFeature(name="tsize", min=0.0, max=150.0),  # tumour size, mm
        NumericFeature(name="pnodes", min=0.0, max=60.0),  # positive lymph nodes
        # Receptor levels are heavy-tailed (median ~30, a few patients in the thousands): the
        # model sees log(1 + level), declared in the plan, so that those few do not dominate
        # the clipped DP-SGD gradients (pooled Cox, the target row, reads the same columns).
        NumericFeature(name="progrec", min=0.0, max=3000.0, transform="log1p"),  # fmol/l
        NumericFeature(name="estrec", min=0.0, max=3000.0, transform="log1p"),  # fmol/l
        CategoricalFeature(name="tgrade", levels=["I", "II", "III"]),
        CategoricalFeature(name="menostat", levels=["Pre", "Post"]),
        CategoricalFeature(name="horTh", levels=["no", "yes"]),
    ]
)
GBSG2_CUTS = [round(365.25 * year, 2) for year in range(1, 8)]
"""Yearly cuts up to 7 years, in days (a public choice: the trial followed patients ~7 years)."""
GBSG2_SITES = {  # site id -> (menostat, horTh)
    "pre-no-ht": ("Pre", "no"),
    "pre-ht": ("Pre", "yes"),
    "post-no-ht": ("Post", "no"),
    "post-ht": ("Post", "yes"),
}


@dataclass(frozen=True)
class Site:
    name: str
    frame: pd.DataFrame  # consortium column names + time + event
    columns: dict[str, str]  # consortium name (and "time", "event") -> the site's column name


@dataclass(frozen=True)
class SplitData:
    name: str
    schema: FeatureSchema
    cuts: list[float]
    train: pd.DataFrame  # the whole training split (the censoring distribution of the IBS)
    test: pd.DataFrame  # the common test split
    sites: tuple[Site, ...]

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(site.name for site in self.sites)


def load_flchain_sites() -> SplitData:
    train, test = fixed_split(load_flchain())
    order = np.random.default_rng(0).permutation(len(train))
    bounds = np.cumsum((0, *FLCHAIN_SIZES))
    names = hospital_column_names(len(FLCHAIN_SIZES))
    sites = tuple(
        Site(f"site-{size}", train.iloc[np.sort(order[lo:hi])].reset_index(drop=True), names[i])
        for i, (size, lo, hi) in enumerate(zip(FLCHAIN_SIZES, bounds[:-1], bounds[1:], strict=True))
    )
    return SplitData("flchain", FLCHAIN_SCHEMA, list(default_time_grid().cuts), train, test, sites)


def load_gbsg2_sites() -> SplitData:
    from lifelines.datasets import load_gbsg2

    frame = load_gbsg2().rename(columns={"cens": EVENT})
    for name in ("tgrade", "menostat", "horTh"):
        frame[name] = frame[name].astype(str).astype(object)
    frame[TIME] = frame[TIME].astype(float)
    frame[EVENT] = frame[EVENT].astype(int)
    frame = frame[[*GBSG2_SCHEMA.names, TIME, EVENT]]
    train, test = fixed_split(frame, test_fraction=0.2, seed=0)
    columns = {name: name for name in GBSG2_SCHEMA.names} | {TIME: "time", EVENT: "cens"}
    sites = tuple(
        Site(
            site,
            train[(train["menostat"] == meno) & (train["horTh"] == ht)].reset_index(drop=True),
            columns,
        )
        for site, (meno, ht) in GBSG2_SITES.items()
    )
    return SplitData("gbsg2", GBSG2_SCHEMA, GBSG2_CUTS, train, test, sites)


SPLITS = {"flchain": load_flchain_sites, "gbsg2": load_gbsg2_sites}


# ---------------------------------------------------------------------- the sites' rows
def split_salt(split: str, site: str) -> str:
    """The fixed key of a site's held-out partition (the same in every row and repeat)."""
    return hashlib.sha256(f"small-sites-bench/{split}/{site}".encode()).hexdigest()


def write_site_csvs(split: SplitData, out: Path) -> dict[str, Path]:
    """One CSV per site under `out` (each in its own column names); site -> path."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for site in split.sites:
        path = out / f"{site.name}.csv"
        site.frame.rename(columns=site.columns).to_csv(path, index=False)
        paths[site.name] = path
    return paths


def data_config(split: SplitData, site: Site, csv: Path, holdout: float) -> DataConfig:
    return DataConfig(
        csv=csv,
        columns={k: v for k, v in site.columns.items() if k not in (TIME, EVENT)},
        time_column=site.columns[TIME],
        event_column=site.columns[EVENT],
        split_salt=split_salt(split.name, site.name),
        holdout_fraction=holdout,
    )


def training_rows(
    split: SplitData, csvs: Mapping[str, Path], holdout: float, plan: RunPlan
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Site -> (raw, time, event) of the rows its agent trains on under `plan`: the agent's own
    reader, row validation, keyed held-out split and `site_agent.cohort.training_rows` (a site
    below `training.holdout_min_site_rows` trains on every row), so the in-process rows train on
    the same patients as the federation."""
    from site_agent.cohort import training_rows as agent_rows

    rows = {}
    for site in split.sites:
        data = load_local_data(data_config(split, site, csvs[site.name], holdout), split.schema)
        chosen = agent_rows(plan, data)
        rows[site.name] = (chosen.raw, chosen.time, chosen.event)
    return rows


# ---------------------------------------------------------------------- plans
def _toml_table(name: str, values: Mapping[str, Any]) -> str:
    return f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


def plan_text(
    split: SplitData,
    name: str,
    *,
    quorum: int,
    training: Mapping[str, Any],
    privacy: Mapping[str, Any],
    secagg: Mapping[str, Any],
    optional_training: Mapping[str, Any] | None = None,
    model: Mapping[str, Any] | None = None,
) -> str:
    """A plan as TOML (the layout of `fedctl.demo.plan_text`), of the linear model unless
    `model` names another (the round-latency measurement at d ≈ 1e3). `optional_training`
    keys are written only if this checkout's TrainingPlan has the field: they spell today's
    behaviour (e.g. `aggregation = "unweighted"`), so leaving them out changes nothing."""
    known = set(TrainingPlan.model_fields)
    training = {**training, **{k: v for k, v in (optional_training or {}).items() if k in known}}
    parts = [
        f"name = {json.dumps(name)}\nquorum = {quorum}\nseed = 0\n",
        _toml_table("time_grid", {"cuts": split.cuts}),
        _toml_table("model", model or {"kind": "linear"}),
        _toml_table("training", training),
        _toml_table("privacy", privacy),
        _toml_table("secagg", secagg),
    ]
    for feature in split.schema.features:
        body = {k: v for k, v in feature.model_dump().items() if v is not None}
        parts.append(_toml_table("[features]", body))
    return "\n".join(parts)


class Pending(Exception):
    """The plan or the site policy needs a field this checkout does not have yet."""


def check_pending(text: str, policy: Mapping[str, Any]) -> RunPlan:
    """The validated plan, or Pending naming what this checkout refuses (before any process)."""
    try:
        plan = parse_plan(text)
    except PlanError as exc:
        raise Pending(str(exc)) from None
    missing = sorted(set(policy) - set(SitePolicy.model_fields))
    if missing:
        raise Pending(f"site policy has no field {', '.join(missing)}")
    SitePolicy.model_validate(policy)
    return plan


def metrics_of(split: SplitData, surv: np.ndarray, risk: np.ndarray) -> Scores:
    """`fedctl.demo.score`'s metrics for predictions made outside a plan vector (pooled Cox)."""
    from survival.metrics import CensoringSurvival, antolini_c, harrell_c, integrated_brier_score

    time_, event = test_outcomes(split)
    cuts = np.asarray(split.cuts)
    censoring = CensoringSurvival.from_data(
        split.train[TIME].to_numpy(float), split.train[EVENT].to_numpy(int)
    )
    eval_times = cuts[(cuts > time_.min()) & (cuts < min(time_.max(), cuts[-1]))]
    return Scores(
        c_index=harrell_c(time_, event, risk),
        c_td=antolini_c(time_, event, surv, cuts),
        ibs=integrated_brier_score(time_, event, surv, cuts, eval_times, censoring),
    )


def test_matrix(split: SplitData) -> np.ndarray:
    columns = {name: split.test[name].tolist() for name in split.schema.names}
    valid = split.schema.validate_rows(columns).valid
    return split.schema.raw_matrix(columns, valid)


def test_outcomes(split: SplitData) -> tuple[np.ndarray, np.ndarray]:
    columns = {name: split.test[name].tolist() for name in split.schema.names}
    valid = split.schema.validate_rows(columns).valid
    return split.test[TIME].to_numpy(float)[valid], split.test[EVENT].to_numpy(int)[valid]


def pooled(
    rows: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], sites: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    raw, time_, event = zip(*(rows[s] for s in sites), strict=True)
    return np.concatenate(raw), np.concatenate(time_), np.concatenate(event)


# ---------------------------------------------------------------------- in-process models
def train_dp(
    split: SplitData, plan: RunPlan, raw: Any, time_: Any, event: Any, seed: int
) -> dict[str, Any]:
    """`fedctl.demo.train_alone` (private): the plan's model and hyper-parameters, rounds × local
    epochs of DP-SGD in one go on these rows, local standardisation and baseline; returns the
    scores, ε and the wall time."""
    from site_agent.train import LocalTrainer, TrainerConfig
    from survival.spec import baseline_logits, initial_parameters

    started = time.perf_counter()
    std = Standardization.from_matrix(raw)
    interval, event_k = plan.time_grid.discretize(time_, event)
    events, at_risk = plan.time_grid.interval_counts(time_, event)
    t = plan.training
    config = TrainerConfig(
        rounds=1,
        local_epochs=t.rounds * t.local_epochs,
        batch_size=min(t.batch_size, time_.size),
        learning_rate=t.learning_rate,
        optimizer=t.optimizer,
        max_grad_norm=t.max_grad_norm,
        target_epsilon=plan.privacy.epsilon,
        target_delta=plan.privacy.delta,
        accountant=plan.privacy.accountant,
    )
    p, k = plan.feature_schema.n_encoded, plan.time_grid.n_intervals
    trainer = LocalTrainer(plan.model, p, k, config, n_samples=time_.size, seed=seed)
    start = initial_parameters(plan.model, p, k, plan.seed, baseline_logits(events, at_risk))
    update = trainer.train_round(start, std.apply(raw), interval, event_k)
    s = score(plan, start + update.delta, std.means, std.stds, split.train, split.test)
    wall = time.perf_counter() - started
    return {"seed": seed, **asdict(s), "epsilon": update.epsilon_total, "wall_s": wall}


def untransformed(schema: FeatureSchema, raw: np.ndarray) -> np.ndarray:
    """The design matrix without the plan's feature transforms (each is invertible on the
    clipped values): what the reference Cox row without them reads."""
    out = np.array(raw, dtype=np.float64, copy=True)
    column = 0
    for feature in schema.features:
        if isinstance(feature, NumericFeature) and feature.transform == "log1p":
            out[:, column] = np.expm1(out[:, column])
        column += len(feature.encoded_names())
    return out


def fit_cox(
    split: SplitData,
    raw: np.ndarray,
    time_: np.ndarray,
    event: np.ndarray,
    *,
    transforms: bool = True,
) -> Scores:
    """Non-private lifelines Cox PH on these rows (standardised), scored on the test split;
    `transforms=False`: on the columns without the plan's feature transforms."""
    from lifelines import CoxPHFitter

    test_raw = test_matrix(split)
    if not transforms:
        raw, test_raw = untransformed(split.schema, raw), untransformed(split.schema, test_raw)
    std = Standardization.from_matrix(raw)
    cols = [f"f{i}" for i in range(raw.shape[1])]
    frame = pd.DataFrame(std.apply(raw).astype(float), columns=cols)
    frame["time"], frame["event"] = time_, event
    fitter = CoxPHFitter(penalizer=1e-4).fit(frame, duration_col="time", event_col="event")
    test = pd.DataFrame(std.apply(test_raw).astype(float), columns=cols)
    risk = fitter.predict_partial_hazard(test).to_numpy(float)
    surv = fitter.predict_survival_function(test, times=split.cuts).to_numpy(float).T
    return metrics_of(split, surv, risk)
