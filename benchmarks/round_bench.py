"""Round overhead of a real federation, and the demo plan's utility and its margins.

`python benchmarks/round_bench.py [--quick] [--rounds R] [--utility-only] [--utility-runs N]
--json PATH`

Starts a coordinator and three site agents as separate processes over loopback mutual TLS (the
same harness as `fedctl demo`) and runs a DP + secure-aggregation plan whose MLP has d ≈ 1e5 or
1e6 parameters. A round's **overhead** is everything but local training: from the coordinator's
receipt of the last site's TRAIN result to its `aggregated` audit entry for that round (five
secure-aggregation stages, gRPC with the 4·d-byte masked inputs, the SQLite store, FedAvg). The
times come from the coordinator's own audit log, so the benchmark measures the product, not a
harness around it. Medians over rounds.

Then (unless --skip-utility) it runs `fedctl demo`'s plan end to end and scores the federated model,
each hospital alone and pooled non-private training on the common test set, as the demo does, and
reports the **margins** of the federated C-index over the mean and the best hospital alone and
under pooled non-private training, checked against `MARGIN_TARGETS`. These margins moved here from
the end-to-end test: each side is a DP-noised estimate on a freshly keyed split, so they are
distributions to measure (`--utility-runs N` repeats the run), not facts that hold every time.
`--quick`: d = 1e5 only, 2 rounds, no utility run; `--utility-only`: no overhead runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _report, by file name (see README)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _report import print_table, write_json

from fedctl.demo import HOSPITALS, compare, plan_text
from fedctl.localfed import LocalFederation, exit_on_sigterm, flchain_hospitals
from fedctl.runs import status_line
from federation.wire.v1 import admin_pb2, federation_pb2
from survival.data import FLCHAIN_SCHEMA, default_time_grid
from survival.spec import ModelSpec, parameter_count

TERMINAL = {
    federation_pb2.RUN_STATE_COMPLETED,
    federation_pb2.RUN_STATE_FAILED,
    federation_pb2.RUN_STATE_STOPPED,
}


def hidden_width_for(d: int) -> int:
    """The width h of a two-hidden-layer MLP whose parameter count is closest to d."""
    k = default_time_grid().n_intervals
    n = FLCHAIN_SCHEMA.n_encoded

    def count(h: int) -> int:
        return parameter_count(ModelSpec(kind="mlp", hidden=(h, h)), n, k)

    return min(range(8, 4097), key=lambda h: abs(count(h) - d))


def bench_plan(rounds: int, width: int) -> str:
    text = plan_text(rounds, local_epochs=1)
    text = text.replace('kind = "linear"', f'kind = "mlp"\nhidden = [{width}, {width}]')
    text = text.replace("batch_size = 256", "batch_size = 512")
    return text.replace("train_timeout_s = 240.0", "train_timeout_s = 900.0")


def run_until_done(stub: object, text: str, timeout: float) -> str:
    response = stub.SubmitRun(  # type: ignore[attr-defined]
        admin_pb2.SubmitRunRequest(format=admin_pb2.PLAN_FORMAT_TOML, plan_text=text)
    )
    if response.errors:
        raise SystemExit("plan refused: " + "; ".join(e.message for e in response.errors))
    run_id = str(response.run_id)
    deadline = time.monotonic() + timeout
    shown = ""
    while time.monotonic() < deadline:
        status = stub.GetRun(admin_pb2.GetRunRequest(run_id=run_id))  # type: ignore[attr-defined]
        line = status_line(status)
        if line != shown:  # one line per change, readable in a log as well as on a terminal
            print(f"  {line}", flush=True)
            shown = line
        if status.state in TERMINAL:
            if status.state != federation_pb2.RUN_STATE_COMPLETED:
                raise SystemExit(f"run ended {status.state}: {status.message}")
            return run_id
        time.sleep(0.5)
    raise SystemExit(f"run {run_id} did not finish within {timeout:.0f} s")


STAGES = (
    "train",
    "secagg_advertise_keys",
    "secagg_share_keys",
    "secagg_masked_input",
    "secagg_consistency_check",
    "secagg_unmask",
)


def stage_breakdown(store: Path, run_id: str) -> dict[str, float]:
    """Median seconds from the last result of one stage to the last result of the next."""
    with sqlite3.connect(store) as conn:
        rows = conn.execute("SELECT ts, action, detail FROM audit_log ORDER BY seq").fetchall()
    last: dict[tuple[int, str], float] = {}
    for ts, action, detail_text in rows:
        detail = json.loads(detail_text)
        if action == "result" and detail.get("run_id") == run_id and detail.get("round", 0) > 0:
            key = (detail["round"], detail.get("kind", ""))
            last[key] = max(last.get(key, 0.0), ts)
    out: dict[str, float] = {}
    rounds = sorted({r for r, _ in last})
    for before, after in itertools.pairwise(STAGES):
        gaps = [
            last[(r, after)] - last[(r, before)]
            for r in rounds
            if (r, before) in last and (r, after) in last
        ]
        if gaps:
            out[after.removeprefix("secagg_") + "_s"] = statistics.median(gaps)
    return out


def round_windows(store: Path, run_id: str) -> list[tuple[float, float]]:
    """Per update round: (last TRAIN result, `aggregated`) in the audit log's wall-clock time,
    the window `round_overheads` measures."""
    with sqlite3.connect(store) as conn:
        rows = conn.execute("SELECT ts, action, detail FROM audit_log ORDER BY seq").fetchall()
    last_train: dict[int, float] = {}
    windows: list[tuple[float, float]] = []
    for ts, action, detail_text in rows:
        detail = json.loads(detail_text)
        if detail.get("run_id") != run_id:
            continue
        if action == "result" and detail.get("kind") == "train":
            last_train[detail["round"]] = max(last_train.get(detail["round"], 0.0), ts)
        update = action == "aggregated" and detail.get("purpose") == "update"
        if update and detail["round"] in last_train:
            windows.append((last_train[detail["round"]], ts))
    return windows


def round_overheads(store: Path, run_id: str) -> tuple[list[float], list[int]]:
    """Per update round: seconds from the last TRAIN result to `aggregated`; bytes per site."""
    with sqlite3.connect(store) as conn:
        rows = conn.execute("SELECT action, detail FROM audit_log ORDER BY seq").fetchall()
    uploads: dict[tuple[int, str], int] = {}
    for action, detail_text in rows:
        detail = json.loads(detail_text)
        if detail.get("run_id") != run_id:
            continue
        if action == "result" and str(detail.get("kind", "")).startswith("secagg"):
            key = (detail["round"], detail.get("kind", ""))
            uploads[key] = max(uploads.get(key, 0), int(detail.get("bytes", 0)))
    per_round: dict[int, int] = {}
    for (round_, _kind), size in uploads.items():
        per_round[round_] = per_round.get(round_, 0) + size
    overheads = [end - start for start, end in round_windows(store, run_id)]
    return overheads, [per_round[r] for r in sorted(per_round) if r > 0]


def measure(d: int, rounds: int, workdir: Path) -> dict[str, object]:
    width = hidden_width_for(d)
    actual = parameter_count(
        ModelSpec(kind="mlp", hidden=(width, width)),
        FLCHAIN_SCHEMA.n_encoded,
        default_time_grid().n_intervals,
    )
    print(f"d≈{d:g}: MLP hidden ({width}, {width}) → {actual} parameters", flush=True)
    federation = LocalFederation(workdir / f"d{d}", HOSPITALS)
    federation.prepare()
    flchain_hospitals(federation)
    try:
        stub = federation.start_all()
        started = time.monotonic()
        run_id = run_until_done(stub, bench_plan(rounds, width), timeout=1800)
        wall = time.monotonic() - started
    finally:
        federation.stop_all()
    store = federation.kits / "coordinator" / "coordinator.sqlite"
    overheads, uploads = round_overheads(store, run_id)
    breakdown = stage_breakdown(store, run_id)
    print("  stage gaps (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in breakdown.items()))
    return {
        "n_sites": len(HOSPITALS),
        "d": actual,
        "rounds": rounds,
        "overhead_s_median": statistics.median(overheads),
        "overhead_s_max": max(overheads),
        "secagg_upload_bytes_per_site": statistics.median(uploads) if uploads else None,
        "run_wall_s": round(wall, 1),
        **breakdown,
    }


MARGIN_TARGETS: tuple[tuple[str, float, float, str], ...] = (
    # (margin, lowest, highest, as text), C-index on the common test set
    ("vs_mean_alone", 1e-12, math.inf, "> 0"),  # strictly better than the average hospital alone
    ("vs_best_alone", -0.004, math.inf, ">= -0.004"),  # ≈ 3 sd of the margin below the best
    ("vs_pooled", -0.01, 0.005, "-0.01 .. 0.005"),  # close to pooled non-private, not above it
)
"""What the end-to-end test used to assert on every run, now measured here. Over eight demo
runs the federated model led the best hospital alone by 0.0009-0.0082 (mean 0.0037, sd
0.0025), so a strict "beats the best" would fail about one run in fourteen."""


def margins(rows: list[dict[str, object]]) -> dict[str, object]:
    """The federated C-index minus each comparison, and whether every target holds."""
    c = {str(r["model"]): float(r["c_index"]) for r in rows}  # type: ignore[arg-type]
    federated = next(v for k, v in c.items() if k.startswith("federated"))
    pooled = next(v for k, v in c.items() if k.startswith("pooled"))
    alone = [v for k, v in c.items() if " alone" in k]
    if not alone:
        raise ValueError("no hospital-alone rows to compare with")
    out: dict[str, object] = {
        "federated_c": federated,
        "mean_alone_c": statistics.fmean(alone),
        "best_alone_c": max(alone),
        "pooled_c": pooled,
        "vs_mean_alone": federated - statistics.fmean(alone),
        "vs_best_alone": federated - max(alone),
        "vs_pooled": federated - pooled,
    }
    out["targets_met"] = all(
        low <= float(out[name]) <= high  # type: ignore[arg-type]
        for name, low, high, _ in MARGIN_TARGETS
    )
    return out


def utility(workdir: Path) -> list[dict[str, object]]:
    federation = LocalFederation(workdir / "utility", HOSPITALS)
    federation.prepare()
    train, test, _csvs, _names = flchain_hospitals(federation)
    try:
        stub = federation.start_all()
        run_id = run_until_done(stub, plan_text(10), timeout=900)
        export = stub.ExportRun(admin_pb2.ExportRunRequest(run_id=run_id))
    finally:
        federation.stop_all()
    return [
        {"model": name, "c_index": s.c_index, "c_td": s.c_td, "ibs": s.ibs}
        for name, s in compare(export, train, test, federation.site_configs())
    ]


def utility_runs(runs: int, scratch: Path) -> list[dict[str, object]]:
    """`runs` demo runs: each one's scores (one table each) and margins (one table in all)."""
    records: list[dict[str, object]] = []
    margin_rows: list[dict[str, object]] = []
    for run in range(1, runs + 1):
        rows = utility(scratch / f"utility-{run}")
        records += [{"bench": "utility", "run": run, **row} for row in rows]
        title = "Demo plan, common test set" + (f" (run {run} of {runs})" if runs > 1 else "")
        print_table(rows, ["model", "c_index", "c_td", "ibs"], title)
        margin_rows.append({"run": run, **margins(rows)})
    records += [{"bench": "utility_margin", **row} for row in margin_rows]
    columns = ["run", "federated_c", "mean_alone_c", "best_alone_c", "pooled_c"]
    columns += [name for name, _, _, _ in MARGIN_TARGETS] + ["targets_met"]
    print_table(margin_rows, columns, "Federated C-index margins (common test set)")
    targets = []
    for name, low, high, text in MARGIN_TARGETS:
        values = [float(row[name]) for row in margin_rows]  # type: ignore[arg-type]
        targets.append(
            {
                "margin": name,
                "target": text,
                "min": min(values),
                "mean": statistics.fmean(values),
                "max": max(values),
                "runs_met": sum(low <= v <= high for v in values),
                "runs": len(values),
            }
        )
    records += [{"bench": "utility_target", **row} for row in targets]
    print_table(
        targets,
        ["margin", "target", "min", "mean", "max", "runs_met", "runs"],
        "Margin targets over the runs",
    )
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-utility", action="store_true")
    parser.add_argument("--utility-only", action="store_true", help="no round-overhead runs")
    parser.add_argument("--utility-runs", type=int, default=1, help="demo runs for the margins")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="keep kits, logs and stores here")
    args = parser.parse_args(argv)
    if args.utility_runs < 1:
        parser.error("--utility-runs must be at least 1")
    exit_on_sigterm()  # a killed benchmark still stops its coordinator and agents
    sizes = [] if args.utility_only else [100_000] if args.quick else [100_000, 1_000_000]
    rounds = 2 if args.quick else args.rounds
    records: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="round-bench-") as scratch_dir:
        scratch = str(args.keep) if args.keep is not None else scratch_dir
        for d in sizes:
            records.append({"bench": "round_overhead", **measure(d, rounds, Path(scratch))})
        if sizes:
            print_table(
                [r for r in records if r["bench"] == "round_overhead"],
                [
                    "n_sites",
                    "d",
                    "rounds",
                    "overhead_s_median",
                    "overhead_s_max",
                    "secagg_upload_bytes_per_site",
                    "run_wall_s",
                ],
                "Round overhead excluding local training (loopback mTLS, 3 site processes)",
            )
        if args.utility_only or not (args.quick or args.skip_utility):
            records += utility_runs(args.utility_runs, Path(scratch))
    if args.json is not None:
        write_json(args.json, records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
