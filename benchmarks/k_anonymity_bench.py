"""Utility cost of the k-anonymity layer: the demo consortium's model at ε = 3, with and without it.

``python benchmarks/k_anonymity_bench.py [--quick] [--json PATH]``

The `fedctl demo` consortium (FLCHAIN's fixed training split as three hospitals by age band, each
CSV in its own column names) trains the demo plan in-process: each hospital's rows come from the
agent's own reader, validation and keyed held-out split (`load_local_data`), through the same
`site_agent.anonymity.anonymise` call the agent makes at the plan offer, and then
`site_agent.cohort.training_rows`; each round every hospital runs `site_agent.train.RunTraining`
(the agent's DP-SGD, σ calibrated to ε = 3 per site) from the global vector, and the deltas are
averaged weighted by training rows (FedAvg, server learning rate 1, as the demo plan). Scored with
`fedctl.demo.score` on the common held-out 20 % of FLCHAIN (raw test rows: the model is used on
real patients' values).

What is left out, equally in every setting: secure aggregation (an exact sum up to fixed-point
rounding) and the DP statistics release, whose noisy moments and interval counts are replaced by
the exact pooled ones (so no ε goes to statistics: training gets the whole ε = 3). Records:
``{setting, k, quasi_identifiers, rows_suppressed, k_achieved, seeds, c_index, c_td, ibs,
c_index_sd}``; metrics are means over seeds (sampling and noise seeds 0, 1, …).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Opacus installs a top-level package named ``benchmarks``, which shadows this folder (it has no
# __init__.py), so the shared report helpers are imported from this file's own directory.
_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]

from _report import print_table, write_json  # noqa: E402

from fedctl.demo import HOSPITALS, plan_text, score  # noqa: E402
from federation.plan import RunPlan, parse_plan  # noqa: E402
from site_agent.anonymity import AnonymisedDataset, anonymise  # noqa: E402
from site_agent.cohort import training_rows  # noqa: E402
from site_agent.config import DataConfig  # noqa: E402
from site_agent.data import LocalDataset, load_local_data  # noqa: E402
from site_agent.train import RunTraining  # noqa: E402
from survival.data import (  # noqa: E402
    fixed_split,
    hospital_column_names,
    load_flchain,
    write_hospital_csvs,
)
from survival.schema import Standardization  # noqa: E402
from survival.spec import baseline_logits, initial_parameters  # noqa: E402

COLUMNS = [
    "setting",
    "k",
    "rows_suppressed",
    "k_achieved",
    "seeds",
    "c_index",
    "c_index_sd",
    "c_td",
    "ibs",
]
YEARS = [str(y) for y in range(1995, 2004)]
SETTINGS: dict[str, str] = {
    "no layer": "",
    "k=5: age (5 bands), sex": """
[privacy.k_anonymity]
k = 5
quasi_identifiers = ["age", "sex"]
bands = 5
""",
    "k=10: age (5 bands), sex, sample.yr and flc.grp in 3 groups": """
[privacy.k_anonymity]
k = 10
quasi_identifiers = ["age", "sex", "sample.yr", "flc.grp"]
bands = 5
[privacy.k_anonymity.hierarchies."sample.yr"]
"1996" = "1995-1997"
"1997" = "1995-1997"
"1999" = "1998-2000"
"2000" = "1998-2000"
"2002" = "2001-2003"
"2003" = "2001-2003"
[privacy.k_anonymity.hierarchies."flc.grp"]
"2" = "1-3"
"3" = "1-3"
"5" = "4-7"
"6" = "4-7"
"7" = "4-7"
"9" = "8-10"
"10" = "8-10"
""",
}
"""Each setting's `[privacy.k_anonymity]` section, appended to the demo plan."""


def hospitals(workdir: Path) -> tuple[Any, Any, list[DataConfig]]:
    """The demo's three hospital CSVs and a data config each (fixed split salts)."""
    train, test = fixed_split(load_flchain())
    csvs = write_hospital_csvs(workdir, train, len(HOSPITALS), "age", seed=0)
    configs = []
    for hospital, csv, names in zip(
        HOSPITALS, csvs, hospital_column_names(len(HOSPITALS)), strict=True
    ):
        configs.append(
            DataConfig(
                csv=csv,
                columns={k: v for k, v in names.items() if k not in ("time", "event")},
                time_column=names["time"],
                event_column=names["event"],
                split_salt=hashlib.sha256(f"k-anonymity-bench/{hospital}".encode()).hexdigest(),
            )
        )
    return train, test, configs


def federated(plan: RunPlan, sites: list[LocalDataset], seed: int) -> tuple[Any, Any, Any]:
    """The demo plan's rounds of FedAvg over the sites' `RunTraining`; (vector, means, stds)."""
    chosen = [training_rows(plan, data) for data in sites]
    raw = np.concatenate([rows.raw for rows in chosen])
    time_ = np.concatenate([rows.time for rows in chosen])
    event = np.concatenate([rows.event for rows in chosen])
    std = Standardization.from_matrix(raw)
    events, at_risk = plan.time_grid.interval_counts(time_, event)
    p, k = plan.feature_schema.n_encoded, plan.time_grid.n_intervals
    vector = initial_parameters(plan.model, p, k, plan.seed, baseline_logits(events, at_risk))
    trainings = [RunTraining(plan, data) for data in sites]
    weights = np.asarray([rows.size for rows in chosen], dtype=np.float64)
    weights /= weights.sum()
    for round_ in range(plan.training.rounds):
        deltas = [
            training.train_round(
                vector,
                std.means,
                std.stds,
                lambda sigma, q, steps: None,
                seed=seed * 10_000 + round_ * 100 + i,
            )
            for i, training in enumerate(trainings)
        ]
        mean = sum(w * d.astype(np.float64) for w, d in zip(weights, deltas, strict=True))
        vector = vector + plan.training.server_learning_rate * mean
    return vector, std.means, std.stds


def run_setting(
    name: str, section: str, configs: list[DataConfig], train: Any, test: Any, seeds: int
) -> dict[str, Any]:
    plan = parse_plan(plan_text(10) + section)
    layer = plan.privacy.k_anonymity
    sites = [anonymise(plan, load_local_data(c, plan.feature_schema)) for c in configs]
    reports = [s.anonymity for s in sites if isinstance(s, AnonymisedDataset) and s.anonymity]
    draws = []
    for seed in range(seeds):
        vector, means, stds = federated(plan, sites, seed)
        draws.append(score(plan, vector, means, stds, train, test))
    c_index = [d.c_index for d in draws]
    achieved = [r.k for r in reports if r.k is not None]
    return {
        "setting": name,
        "k": None if layer is None else layer.k,
        "quasi_identifiers": [] if layer is None else layer.quasi_identifiers,
        "rows_suppressed": sum(r.rows_suppressed for r in reports) if layer else 0,
        "k_achieved": min(achieved) if achieved else None,
        "seeds": seeds,
        "c_index": statistics.fmean(c_index),
        "c_td": statistics.fmean(d.c_td for d in draws),
        "ibs": statistics.fmean(d.ibs for d in draws),
        "c_index_sd": statistics.stdev(c_index) if len(c_index) > 1 else None,
        "rows_used": sum(s.n_valid for s in sites),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds instead of 10")
    parser.add_argument("--json", type=Path, help="write the records as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    seeds = 2 if args.quick else 10
    records = []
    with tempfile.TemporaryDirectory(prefix="k-anonymity-bench-") as scratch:
        train, test, configs = hospitals(Path(scratch))
        for name, section in SETTINGS.items():
            records.append(run_setting(name, section, configs, train, test, seeds))
            print(f"  {name}: {time.perf_counter() - started:.0f} s", flush=True)
    print_table(records, COLUMNS, "k-anonymity layer: demo consortium, DP ε = 3 (test split)")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        write_json(args.json, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
