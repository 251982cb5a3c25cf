"""Utility on FLCHAIN: pooled Cox vs discrete-time survival models, with and without DP.

``python benchmarks/utility_bench.py [--quick] --json PATH``

One site holding the whole fixed 80/20 training split (seed 0) trains with
:class:`site_agent.train.LocalTrainer`; every model is scored on the common held-out 20 %.
Records: ``{model, setting, epsilon, c_index, c_td, ibs, sec_per_epoch}``, metrics averaged over
seeds. ``--quick`` runs only ``mlp`` non-private and DP ε=3 with 2 seeds.

Timing is per local epoch of ``train_round`` (training loop only), at the same batch size and
steps per epoch in both settings, with one torch thread (the machine is shared; one thread is
also the fastest setting for these small models).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Opacus installs a top-level package named ``benchmarks``, which shadows this folder (it has no
# __init__.py), so the shared report helpers are imported from this file's own directory.
_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]

from _report import print_table, write_json  # noqa: E402

from site_agent.train import LocalTrainer, TrainerConfig  # noqa: E402
from survival.data import FLCHAIN_SCHEMA, default_time_grid, fixed_split, load_flchain  # noqa: E402
from survival.loss import risk_score, survival_curve  # noqa: E402
from survival.metrics import (  # noqa: E402
    CensoringSurvival,
    antolini_c,
    harrell_c,
    integrated_brier_score,
)
from survival.models import ModelSpec, build_model, flat_parameters, init_baseline  # noqa: E402
from survival.schema import Standardization  # noqa: E402

COLUMNS = ["model", "setting", "epsilon", "c_index", "c_td", "ibs", "sec_per_epoch"]
EPSILONS = (1.0, 3.0, 8.0)

#: Chosen by the tuning recorded in docs/model.md; one round of ``local_epochs`` at one site.
#: Both settings use the same batch size (so the same steps per epoch) for the timing comparison.
SPECS = {"linear": ModelSpec(kind="linear"), "mlp": ModelSpec(kind="mlp", hidden=(32, 32))}
BATCH = 1024
NON_PRIVATE: dict[str, dict[str, Any]] = {
    "linear": {"local_epochs": 40, "learning_rate": 0.01, "optimizer": "adam"},
    "mlp": {"local_epochs": 20, "learning_rate": 0.003, "optimizer": "adam"},
}
PRIVATE: dict[str, dict[str, Any]] = {
    kind: {"local_epochs": 40, "learning_rate": 1.0, "optimizer": "sgd", "max_grad_norm": 3.0}
    for kind in SPECS
}


@dataclass
class Split:
    """Standardised features and discretised outcomes of the fixed split."""

    x_train: np.ndarray
    interval_train: np.ndarray
    event_train: np.ndarray
    time_train: np.ndarray
    status_train: np.ndarray
    x_test: np.ndarray
    time_test: np.ndarray
    status_test: np.ndarray
    cuts: np.ndarray
    widths: np.ndarray
    eval_times: np.ndarray
    events: np.ndarray
    at_risk: np.ndarray


def load_split() -> Split:
    """FLCHAIN, fixed split, schema-validated rows, train-set standardisation, public time grid."""
    train, test = fixed_split(load_flchain())
    grid = default_time_grid()
    mats = []
    frames = []
    for frame in (train, test):
        check = FLCHAIN_SCHEMA.validate_rows(frame)
        mats.append(FLCHAIN_SCHEMA.raw_matrix(frame, check.valid))
        frames.append(frame[np.asarray(check.valid)])
    train, test = frames
    standard = Standardization.from_matrix(mats[0])
    t_train = train["time"].to_numpy(float)
    e_train = train["event"].to_numpy(int)
    t_test = test["time"].to_numpy(float)
    interval, event = grid.discretize(t_train, e_train)
    events, at_risk = grid.interval_counts(t_train, e_train)
    cuts = np.asarray(grid.cuts, dtype=float)
    horizon = min(t_test.max(), t_train.max())
    return Split(
        x_train=standard.apply(mats[0]),
        interval_train=interval,
        event_train=event,
        time_train=t_train,
        status_train=e_train,
        x_test=standard.apply(mats[1]),
        time_test=t_test,
        status_test=test["event"].to_numpy(int),
        cuts=cuts,
        widths=np.asarray(grid.widths(), dtype=float),
        eval_times=cuts[cuts < horizon],
        events=np.asarray(events, dtype=float),
        at_risk=np.asarray(at_risk, dtype=float),
    )


def score(split: Split, surv: np.ndarray, risk: np.ndarray) -> dict[str, float]:
    """Harrell's C, Antolini's C_td and the IPCW integrated Brier score on the test split."""
    censoring = CensoringSurvival.from_data(split.time_train, split.status_train)
    return {
        "c_index": float(harrell_c(split.time_test, split.status_test, risk)),
        "c_td": float(antolini_c(split.time_test, split.status_test, surv, split.cuts)),
        "ibs": float(
            integrated_brier_score(
                split.time_test, split.status_test, surv, split.cuts, split.eval_times, censoring
            )
        ),
    }


def run_model(
    split: Split, kind: str, epsilon: float | None, seed: int, hyper: dict[str, Any]
) -> dict[str, float]:
    """Train one model with LocalTrainer (one round), score it, time its epochs."""
    n, p = split.x_train.shape
    k = len(split.cuts)
    spec = SPECS[kind]
    torch.manual_seed(seed)  # dropout and anything else drawing from torch's global RNG
    model = build_model(spec, p, k, seed=seed)  # the coordinator's deterministic initial vector
    init_baseline(model, split.events, split.at_risk)
    params = flat_parameters(model)
    cfg = TrainerConfig(
        rounds=1,
        local_epochs=hyper["local_epochs"],
        batch_size=hyper.get("batch_size", BATCH),
        learning_rate=hyper["learning_rate"],
        optimizer=hyper["optimizer"],
        max_grad_norm=hyper.get("max_grad_norm", 1.0),
        target_epsilon=epsilon,
        target_delta=delta_for(n),
    )
    trainer = LocalTrainer(spec, p, k, cfg, n, seed=seed)
    update = trainer.train_round(params, split.x_train, split.interval_train, split.event_train)
    if epsilon is not None and update.epsilon_total > epsilon:
        raise RuntimeError(f"spent ε={update.epsilon_total} > target {epsilon}")
    trained = trainer.model.eval()
    with torch.no_grad():
        logits = trained(torch.as_tensor(split.x_test))
        surv = survival_curve(logits).numpy().astype(float)
        risk = risk_score(logits, torch.as_tensor(split.widths)).numpy().astype(float)
    out = score(split, surv, risk)
    out["sec_per_epoch"] = update.seconds / cfg.local_epochs
    return out


def delta_for(n: int) -> float:
    """δ = 1e-5 (< 1/n for every site size we run; 1/n² would be ~2.5e-8 here)."""
    return 1e-5


def run_cox(split: Split) -> dict[str, float]:
    """Pooled lifelines Cox PH on the same standardised features (the statistician's reference)."""
    import pandas as pd
    from lifelines import CoxPHFitter

    cols = [f"f{i}" for i in range(split.x_train.shape[1])]
    frame = pd.DataFrame(split.x_train, columns=cols)
    frame["time"] = split.time_train
    frame["event"] = split.status_train
    fitter = CoxPHFitter(penalizer=1e-4)
    fitter.fit(frame, duration_col="time", event_col="event")
    test = pd.DataFrame(split.x_test, columns=cols)
    risk = fitter.predict_partial_hazard(test).to_numpy(float)
    surv = fitter.predict_survival_function(test, times=split.cuts).to_numpy(float).T
    return score(split, surv, risk)


def mean_record(
    model: str, setting: str, epsilon: float | None, runs: list[dict[str, float]]
) -> dict[str, object]:
    """Average each metric over seeds."""
    record: dict[str, object] = {"model": model, "setting": setting, "epsilon": epsilon}
    for key in ("c_index", "c_td", "ibs", "sec_per_epoch"):
        values = [r[key] for r in runs if key in r]
        record[key] = statistics.fmean(values) if values else None
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="mlp non-private and DP ε=3, 2 seeds")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/utility.json"))
    parser.add_argument("--seeds", type=int, default=None, help="override the number of seeds")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = list(range(args.seeds or (2 if args.quick else 5)))
    split = load_split()
    print(
        f"FLCHAIN fixed split: train {split.x_train.shape}, test {split.x_test.shape[0]}, "
        f"{len(split.cuts)} intervals, δ={delta_for(split.x_train.shape[0])}, seeds {seeds}",
        flush=True,
    )
    plan: list[tuple[str, str, float | None]] = [("mlp", "non-private", None), ("mlp", "dp", 3.0)]
    if not args.quick:
        plan = [("linear", "non-private", None), ("mlp", "non-private", None)]
        plan += [(kind, "dp", eps) for kind in ("linear", "mlp") for eps in EPSILONS]
    records: list[dict[str, object]] = []
    if not args.quick:
        records.append(mean_record("cox", "reference", None, [run_cox(split)]))
    for kind, setting, eps in plan:
        hyper = (PRIVATE if eps is not None else NON_PRIVATE)[kind]
        start = time.perf_counter()
        runs = [run_model(split, kind, eps, seed, hyper) for seed in seeds]
        records.append(mean_record(kind, setting, eps, runs))
        spent = time.perf_counter() - start
        print(
            f"  {kind} {setting} ε={eps}: {spent:.1f}s, C={records[-1]['c_index']:.4f}", flush=True
        )
    print_table(records, COLUMNS, "Utility on FLCHAIN (test split, mean over seeds)")
    ratio = timing_ratio(records)
    if not math.isnan(ratio):
        print(f"DP / non-private seconds per epoch (mlp): {ratio:.2f}x")
    write_json(args.json, records)
    return 0


def timing_ratio(records: list[dict[str, object]]) -> float:
    """mlp DP (ε=3) epoch time over mlp non-private epoch time."""
    times = {
        (r["setting"], r["epsilon"]): r["sec_per_epoch"] for r in records if r["model"] == "mlp"
    }
    dp, plain = times.get(("dp", 3.0)), times.get(("non-private", None))
    if isinstance(dp, float) and isinstance(plain, float):
        return dp / plain
    return math.nan


if __name__ == "__main__":
    raise SystemExit(main())
