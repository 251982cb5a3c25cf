"""Utility where hospitals are small: the real federation vs pooled DP, each site alone, and Cox.

`python benchmarks/small_sites_bench.py [--quick] [--repeats N] [--splits flchain,gbsg2]
[--rows local,...] --json PATH`

Two splits (`_small_sites.py`; one federation is run by `_small_sites_fed.py`): FLCHAIN as six
sites of 40-250 patients drawn from the fixed training split, and GBSG2 as four sites by
menopausal status × hormonal therapy; both are scored on their common test split (Harrell's C,
Antolini's C_td, IPCW integrated Brier score, as `fedctl demo` scores). Every row spends ε = 3,
δ = 1e-5 per site (per patient for the pooled rows) and is repeated `--repeats` times (mean ±
sd); the sites' training rows are fixed (a fixed held-out key per site), so repeats vary the DP
noise and sampling only.

Rows (each is one function below):
- `local`: today's federation: each site runs local DP-SGD epochs per round, FedAvg of the
  updates, unweighted, through the real thing (`fedctl.localfed.LocalFederation`: coordinator and
  one agent per site as processes, loopback mutual TLS, secure aggregation, the demo's plan
  layout with `training.mode = "local"`, `training.aggregation = "unweighted"`).
- `local-weighted`: the same with `training.aggregation = "weighted"` (FedAvg weighted by the
  DP-estimated cohort sizes).
- `distributed-h1` / `distributed-hn`: `training.mode = "distributed"` (one DP-SGD step of the
  pooled batch per round, Poisson rate `training.sample_rate`, FedAdam on the server) with
  `privacy.noise_shares` and every site's `trusted_noise_sites` = 1 or n.
- `pooled-dp`: DP-SGD in-process on every site's training rows pooled at one site.
- `alone:<site>`: each site alone, DP-SGD in-process on its own training rows.
- `cox`: pooled non-private lifelines Cox PH on the same rows (the target row).
- `cox-untransformed`: the same, without the plan's feature transforms (GBSG2's receptor levels
  are log1p in the plan): what the transforms add, shown beside what the federation reaches.
The in-process DP rows train as `fedctl.demo.train_alone` does (the local plan's hyper-parameters,
rounds × local epochs in one go, local standardisation). Federated records carry the sites' ε
(max over sites and repeats) from the export and recomputed from each site's ledger, and the
training phase's round rate from the coordinator's audit log. A row whose plan or site policy
needs a field this checkout lacks is reported `pending` (not run) and does not fail the script.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]  # siblings by file name (see README), the repo

import torch  # noqa: E402
from _report import print_table, write_json  # noqa: E402
from _small_sites import (  # noqa: E402
    SPLITS,
    Pending,
    check_pending,
    fit_cox,
    pooled,
    train_dp,
    training_rows,
    write_site_csvs,
)
from _small_sites_fed import FedRun, RunFailed, run_federation  # noqa: E402
from _small_sites_plans import Bench, distributed_plan, local_plan, policy  # noqa: E402

from fedctl.localfed import LocalFederationError, exit_on_sigterm  # noqa: E402

ROW_ORDER = (
    "local",
    "local-weighted",
    "local-per-site",
    "distributed-h1",
    "distributed-hn",
    "pooled-dp",
    "alone",
)
ROW_ORDER += ("cox", "cox-untransformed")
QUICK_ROWS = ("local", "distributed-hn", "pooled-dp", "cox")
METRICS = ("c_index", "c_td", "ibs", "wall_s")
COLUMNS = [
    "split",
    "mode",
    "h",
    "n_train",
    "repeats",
    "epsilon",
    "epsilon_recomputed",
    "epsilon_own_recomputed",
    "c_index",
    "c_index_sd",
    "ibs",
    "ibs_sd",
    "wall_s",
    "wall_vs_local",
    "rounds_per_s",
    "steady_rounds_per_s",
    "status",
]


# ---------------------------------------------------------------------- records
def summarise(b: Bench, mode: str, runs: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """One record: mean and sd over repeats of each metric, ε the max over repeats."""
    record: dict[str, Any] = {"split": b.split.name, "mode": mode, "h": None, "n_sites": b.n}
    record |= {"n_train": b.n_train, "repeats": len(runs), "status": "ok", **fields}
    if not runs:
        return record
    record["epsilon"] = max(r["epsilon"] for r in runs)
    for key in (*METRICS, "train_s", "rounds_per_s", "steady_rounds_per_s", "round_s_median"):
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            record[key] = statistics.fmean(values)
            record[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else None
    for key in ("epsilon_recomputed", "epsilon_own_recomputed", "epsilon_max_rel_diff", "rounds"):
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            record[key] = max(values)
    record["runs"] = runs
    return record


def fed_record(run: FedRun) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        **asdict(run.scores),
        "epsilon": run.epsilon,
        "epsilon_by_site": run.privacy,
        "epsilon_recomputed": run.epsilon_recomputed,
        "epsilon_own_recomputed": run.epsilon_own_recomputed,
        "epsilon_max_rel_diff": run.epsilon_rel_diff,
        "wall_s": run.wall_s,
        **run.timing,
    }


def federated(b: Bench, mode: str, text: str, site_policy: dict[str, Any], h: int | None = None):
    """Run `text` `--repeats` times through a local federation of the split's sites."""
    print(f"  {b.split.name} {mode}: {b.n} site processes, mutual TLS, secure aggregation")
    try:
        check_pending(text, site_policy)
    except Pending as exc:
        print(f"    pending: {exc}")
        return [summarise(b, mode, [], h=h, status="pending", error=str(exc))]
    workdir = b.scratch / "federations" / f"{b.split.name}-{mode}"
    try:
        runs = run_federation(
            b.split,
            workdir,
            b.csvs,
            text,
            site_policy,
            b.args.repeats,
            holdout=b.args.holdout_fraction,
            timeout=b.args.run_timeout,
        )
    except (RunFailed, LocalFederationError) as exc:
        print(f"    failed: {exc}", file=sys.stderr)
        for log in sorted((workdir / "logs").glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()
            errors = [i for i, line in enumerate(lines) if "Traceback" in line]
            if not errors and log.name != "coordinator.log":
                continue
            tail = lines[errors[-1] :][-12:] if errors else lines[-5:]
            print(f"    {log.name}:\n      " + "\n      ".join(tail), file=sys.stderr)
        return [summarise(b, mode, [], h=h, status="failed", error=str(exc))]
    return [summarise(b, mode, [fed_record(r) for r in runs], h=h)]


# ---------------------------------------------------------------------- the rows
def row_local(b: Bench) -> list[dict[str, Any]]:
    return federated(b, "local", local_plan(b, "unweighted"), policy(b))


def row_local_weighted(b: Bench) -> list[dict[str, Any]]:
    return federated(b, "local-weighted", local_plan(b, "weighted"), policy(b))


def row_local_per_site(b: Bench) -> list[dict[str, Any]]:
    """Weighted FedAvg with a site-stratified model: shared covariate effects, each site's own
    baseline hazard kept at the site (`model.baseline = "per-site"`)."""
    text = local_plan(b, "weighted").replace("[model]\n", '[model]\nbaseline = "per-site"\n')
    return federated(b, "local-per-site", text, policy(b))


def row_distributed_h1(b: Bench) -> list[dict[str, Any]]:
    text = distributed_plan(b, 1)
    return federated(b, "distributed-h1", text, policy(b, trusted_noise_sites=1), h=1)


def row_distributed_hn(b: Bench) -> list[dict[str, Any]]:
    text = distributed_plan(b, b.n)
    return federated(b, "distributed-hn", text, policy(b, trusted_noise_sites=b.n), h=b.n)


def in_process(b: Bench, mode: str, sites: tuple[str, ...]) -> dict[str, Any]:
    plan = check_pending(local_plan(b), {})
    raw, time_, event = pooled(b.rows, sites)
    runs = [train_dp(b.split, plan, raw, time_, event, seed) for seed in range(b.args.repeats)]
    record = summarise(b, mode, runs, n_sites=len(sites), n_train=int(time_.size))
    print(f"  {b.split.name} {mode}: C {record['c_index']:.4f} IBS {record['ibs']:.4f}")
    return record


def row_pooled_dp(b: Bench) -> list[dict[str, Any]]:
    return [in_process(b, "pooled-dp", b.split.site_names)]


def row_alone(b: Bench) -> list[dict[str, Any]]:
    return [in_process(b, f"alone:{site}", (site,)) for site in b.split.site_names]


def row_cox(b: Bench, *, transforms: bool = True) -> list[dict[str, Any]]:
    """Pooled non-private lifelines Cox PH on the standardised pooled training rows (with the
    plan's feature transforms, as every other row reads them, or without)."""
    started = time.perf_counter()
    s = fit_cox(b.split, *pooled(b.rows, b.split.site_names), transforms=transforms)
    run = {**asdict(s), "epsilon": None, "wall_s": time.perf_counter() - started}
    mode = "cox" if transforms else "cox-untransformed"
    print(f"  {b.split.name} {mode}: C {s.c_index:.4f} IBS {s.ibs:.4f}")
    return [summarise(b, mode, [run])]


def row_cox_untransformed(b: Bench) -> list[dict[str, Any]]:
    return row_cox(b, transforms=False)


ROWS: dict[str, Callable[[Bench], list[dict[str, Any]]]] = {
    "local": row_local,
    "local-weighted": row_local_weighted,
    "local-per-site": row_local_per_site,
    "distributed-h1": row_distributed_h1,
    "distributed-hn": row_distributed_hn,
    "pooled-dp": row_pooled_dp,
    "alone": row_alone,
    "cox": row_cox,
    "cox-untransformed": row_cox_untransformed,
}


# ---------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 repeat; rows " + ",".join(QUICK_ROWS))
    p.add_argument("--repeats", type=int, default=None, help="repeats per row (default 5)")
    p.add_argument("--splits", default="flchain,gbsg2")
    p.add_argument("--rows", default=None, help="comma list of " + ",".join(ROW_ORDER))
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--keep", type=Path, default=None, help="keep kits, logs and CSVs here")
    p.add_argument("--epsilon", type=float, default=3.0)
    p.add_argument("--delta", type=float, default=1e-5)
    # pld: the plan's default; each site's ledger charges a run with its plan's accountant, so
    # the σ the agents calibrate in PLD is charged in PLD too.
    p.add_argument("--accountant", choices=("rdp", "pld", "prv"), default="pld")
    p.add_argument("--holdout-fraction", type=float, default=0.2, help="each site's metrics rows")
    p.add_argument(
        "--holdout-min-site-rows",
        type=int,
        default=None,
        help="plan training.holdout_min_site_rows (default: the plan's)",
    )
    p.add_argument("--run-timeout", type=float, default=3600.0, help="seconds per federated run")
    g = p.add_argument_group("local mode (the demo plan's defaults; also the in-process rows)")
    g.add_argument("--rounds", type=int, default=10)
    g.add_argument("--local-epochs", type=int, default=2)
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--learning-rate", type=float, default=0.5)
    g.add_argument("--max-grad-norm", type=float, default=2.0)
    g = p.add_argument_group("distributed mode")
    g.add_argument("--dist-rounds", type=int, default=40, help="DP-SGD steps (one per round)")
    # 1.0: full-batch distributed DP-GD, whose Skellam accounting is tight; below 1 the only
    # amplification-by-sampling bound proven for Skellam is loose.
    g.add_argument("--dist-sample-rate", type=float, default=1.0, help="per-patient Poisson rate")
    g.add_argument("--dist-max-grad-norm", type=float, default=2.0)
    g.add_argument("--dist-server-optimizer", default="fedadam")
    g.add_argument(
        "--dist-mlp-width",
        type=int,
        default=0,
        help="an MLP of two hidden layers this wide instead of the linear model (0); 16 gives "
        "d ≈ 1e3 on FLCHAIN, the size the round-latency target names",
    )
    g.add_argument("--dist-server-lr", type=float, default=0.05, help="FedAdam step size")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 5)
    names = args.rows or ",".join(QUICK_ROWS if args.quick else ROW_ORDER)
    args.row_names = [r.strip() for r in names.split(",") if r.strip()]
    args.split_names = [s.strip() for s in args.splits.split(",") if s.strip()]
    for name in args.row_names:
        if name not in ROWS:
            p.error(f"unknown row {name!r}; choose from {', '.join(ROW_ORDER)}")
    for name in args.split_names:
        if name not in SPLITS:
            p.error(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


def relative_to_local(records: list[dict[str, Any]]) -> None:
    """wall_vs_local: a federated row's run wall time over the local row's, same split."""
    local = {r["split"]: r.get("wall_s") for r in records if r["mode"] == "local"}
    for r in records:
        base = local.get(r["split"])
        if r.get("rounds") and base and r.get("wall_s"):  # a federated row that ran
            r["wall_vs_local"] = r["wall_s"] / base


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()  # a killed benchmark still stops its coordinator and agents
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the agents inherit it: 2 shared cores
        os.environ.setdefault(var, "1")
    torch.set_num_threads(1)
    started = time.monotonic()
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="small-sites-") as tmp:
        scratch = args.keep.resolve() if args.keep is not None else Path(tmp)
        for split_name in args.split_names:
            split = SPLITS[split_name]()
            csvs = write_site_csvs(split, scratch / "data" / split_name)
            b = Bench(args, scratch, split, csvs, {})
            plan = check_pending(local_plan(b), {})  # the sites' rows depend on the plan
            b.rows = training_rows(split, csvs, args.holdout_fraction, plan)
            sizes = ", ".join(f"{s}={int(t.size)}" for s, (_, t, _) in b.rows.items())
            print(f"{split_name}: {b.n} sites, training rows {sizes}; test {len(split.test)}")
            for row in args.row_names:
                row_started = time.monotonic()
                records += ROWS[row](b)
                print(f"  ({row}: {time.monotonic() - row_started:.0f} s)", flush=True)
    relative_to_local(records)
    title = f"Small sites, common test split (ε={args.epsilon:g} per site, mean of repeats)"
    print_table(records, COLUMNS, title)
    for r in records:
        if r["status"] != "ok":
            print(f"{r['split']} {r['mode']}: {r['status']}: {r.get('error', '')}")
    print(f"total {time.monotonic() - started:.0f} s")
    if args.json is not None:
        write_json(args.json, records)
        print(f"wrote {len(records)} records to {args.json}")
    return 1 if any(r["status"] == "failed" for r in records) else 0


if __name__ == "__main__":
    raise SystemExit(main())
