"""`fedctl demo`: a real three-hospital federation on this machine, start to finish.

Provisions a throwaway consortium, writes three hospital CSVs from FLCHAIN (split by age band,
each with its own column names), starts the coordinator and three site agents as separate
processes over loopback mutual TLS, runs a DP (ε = 3 per site) securely aggregated plan with live
progress, and ends with a table: the federated model vs each hospital alone (same DP budget, mean
of five trainings) vs pooled non-private training, all scored on the common held-out test set.
Everything it started is stopped before it returns, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedctl.errors import EXIT_FAILED, EXIT_OK, CliError
from fedctl.localfed import (
    LocalFederation,
    LocalFederationError,
    exit_on_sigterm,
    flchain_hospitals,
)
from fedctl.report import write_report
from fedctl.runs import exported_vector, follow, write_export
from federation.wire.v1 import admin_pb2

HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")
ALONE_DRAWS = 5  # DP trainings averaged per hospital-alone baseline

DEMO_PLAN = """
name = "flchain-demo"
quorum = 2  # a round goes ahead with two hospitals if the third drops out
seed = 0

[time_grid]
cuts = {cuts}

[model]
kind = "linear"

[training]
rounds = {rounds}
local_epochs = {local_epochs}
batch_size = 256
learning_rate = {learning_rate}
optimizer = "sgd"
max_grad_norm = 2.0
server_optimizer = "{server_optimizer}"
server_learning_rate = {server_learning_rate}

[privacy]
epsilon = 3.0
delta = 1e-5
{metrics_line}stats_noise_multiplier = 3.0

[evaluation]  # the final evaluation's per-subgroup figures (docs/model.md, "Subgroups")
subgroups = ["sex", "age"]
cuts = {{ age = [70.0] }}

[secagg]
stage_timeout_s = 30.0
train_timeout_s = 240.0
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="run a real three-hospital federation on bundled data (≈ 3 minutes)"
    )
    p.add_argument("--workdir", type=Path, default=Path("demo-run"), help="scratch folder")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the scratch folder afterwards (the export and the report stay under it)",
    )
    p.add_argument(
        "--report",
        type=Path,
        default=Path("demo-report"),
        help="folder for report.html and the export when --keep is not given",
    )
    p.set_defaults(handler=cmd_demo)


@dataclass
class Scores:
    c_index: float
    c_td: float
    ibs: float


def plan_text(
    rounds: int,
    *,
    local_epochs: int = 2,
    learning_rate: float = 0.5,
    server_optimizer: str = "fedavg",
    server_learning_rate: float = 1.0,
    metrics_noise_multiplier: float | None = None,
) -> str:
    """The demo plan (also the end-to-end tests' plan, with fewer epochs and shorter timeouts).

    It evaluates the final model only and leaves the metrics σ to the plan's calibration (one
    release at 0.7 of ε: σ ≈ 1.91), the defaults an operator's plan gets too."""
    from survival.data import FLCHAIN_SCHEMA, default_time_grid

    body = DEMO_PLAN.format(
        cuts=json.dumps(default_time_grid().cuts),
        rounds=rounds,
        local_epochs=local_epochs,
        learning_rate=learning_rate,
        server_optimizer=server_optimizer,
        server_learning_rate=server_learning_rate,
        metrics_line=""
        if metrics_noise_multiplier is None
        else f"metrics_noise_multiplier = {metrics_noise_multiplier}\n",
    )
    features = []
    for feature in FLCHAIN_SCHEMA.features:
        lines = ["[[features]]"]
        for key, value in feature.model_dump().items():
            if value is not None:
                lines.append(f"{key} = {json.dumps(value)}")
        features.append("\n".join(lines))
    return body + "\n" + "\n\n".join(features) + "\n"


def cmd_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    exit_on_sigterm()
    federation = LocalFederation(args.workdir, HOSPITALS)
    try:
        federation.prepare()
    except LocalFederationError as exc:
        raise CliError(f"{exc}; choose another --workdir") from None
    print(f"provisioned a throwaway consortium in {federation.kits}", flush=True)
    train, test, csvs, _names = flchain_hospitals(federation)
    print(f"wrote {len(csvs)} hospital CSVs (split by age band, own column names)", flush=True)
    try:
        try:
            stub = federation.start_all()
        except LocalFederationError as exc:
            raise CliError(f"{exc} (logs in {federation.logs})", exit_code=EXIT_FAILED) from None
        print(f"all {len(HOSPITALS)} hospitals connected over mutual TLS", flush=True)
        response = stub.SubmitRun(
            admin_pb2.SubmitRunRequest(
                format=admin_pb2.PLAN_FORMAT_TOML, plan_text=plan_text(args.rounds)
            )
        )
        if response.errors:
            raise CliError("; ".join(e.message for e in response.errors), exit_code=EXIT_FAILED)
        print(f"submitted {response.run_id}: DP ε=3 per site, secure aggregation on", flush=True)
        # not detachable: Ctrl-C ends the demo, whose federation stops with it
        code = follow(stub, response.run_id, "text", detachable=False)
        if code != EXIT_OK:
            print(f"the run did not complete; logs in {federation.logs}", file=sys.stderr)
            return code
        export = stub.ExportRun(admin_pb2.ExportRunRequest(run_id=response.run_id))
        status = stub.GetRun(admin_pb2.GetRunRequest(run_id=response.run_id))
        write_export(export, federation.workdir / "export")
    finally:
        federation.stop_all()
    print("all demo processes stopped; scoring on the common test set…", flush=True)
    _print_table(compare(export, train, test, federation.site_configs()))
    report_dir = federation.workdir / "report" if args.keep else args.report
    report = write_report(export, status, report_dir)
    if not args.keep:
        shutil.rmtree(federation.workdir, ignore_errors=True)
    print(f"demo finished in {time.monotonic() - started:.0f} s", flush=True)
    print(f"report: {report.resolve()}", flush=True)
    return EXIT_OK


def compare(
    export: admin_pb2.ExportRunResponse,
    train: Any,
    test: Any,
    site_configs: Sequence[tuple[str, Path]],
    alone_draws: int = ALONE_DRAWS,
) -> list[tuple[str, Scores]]:
    """Score the federated model, each hospital alone (same DP budget) and pooled non-private.

    A hospital alone trains on exactly the rows its agent trained on in the federation: its
    site.toml's data section, the same row validation and the same keyed held-out split. Its
    scores are the mean over `alone_draws` DP trainings (sampling and noise seeds 0, 1, …): one
    draw of a 1 700-patient DP model varies by ±0.005-0.01 in C-index, and the comparison is with
    what the hospital can expect alone, not with its luckiest or unluckiest draw.
    """
    if alone_draws < 1:
        raise ValueError(f"alone_draws must be at least 1, got {alone_draws}")
    from federation.plan import RunPlan
    from site_agent.config import load_site_config
    from site_agent.data import load_local_data

    card = json.loads(export.model_card_json)
    plan = RunPlan.model_validate(card["plan"])
    vector = exported_vector(export, plan)
    std = card["standardization"]
    rows: list[tuple[str, Scores]] = []
    rows.append(
        ("federated (DP ε=3, secagg)", score(plan, vector, std["means"], std["stds"], train, test))
    )
    for hospital, config_path in site_configs:
        data = load_local_data(load_site_config(config_path).data, plan.feature_schema)
        raw, time_, event = data.split(holdout=False)
        draws = [
            train_alone(plan, raw, time_, event, train, test, private=True, seed=seed)
            for seed in range(alone_draws)
        ]
        rows.append((f"{hospital} alone (DP ε=3, mean of {alone_draws})", _mean(draws)))
    raw, valid = _matrix(plan, train)
    time_ = train["time"].to_numpy(float)[valid]
    event = train["event"].to_numpy(int)[valid]
    rows.append(
        ("pooled, non-private", train_alone(plan, raw, time_, event, train, test, private=False))
    )
    return rows


def _matrix(plan: Any, frame: Any) -> Any:
    columns = {name: frame[name].tolist() for name in plan.feature_schema.names}
    valid = plan.feature_schema.validate_rows(columns).valid
    return plan.feature_schema.raw_matrix(columns, valid), valid


def score(plan: Any, vector: Any, means: Any, stds: Any, train: Any, test: Any) -> Scores:
    import numpy as np

    from site_agent.model import predict
    from survival.metrics import CensoringSurvival, antolini_c, harrell_c, integrated_brier_score

    raw, valid = _matrix(plan, test)
    time_ = test["time"].to_numpy(float)[valid]
    event = test["event"].to_numpy(int)[valid]
    surv, risk = predict(plan, vector, raw, means, stds)
    cuts = np.asarray(plan.time_grid.cuts)
    censoring = CensoringSurvival.from_data(
        train["time"].to_numpy(float), train["event"].to_numpy(int)
    )
    eval_times = cuts[(cuts > time_.min()) & (cuts < min(time_.max(), cuts[-1]))]
    return Scores(
        c_index=harrell_c(time_, event, risk),
        c_td=antolini_c(time_, event, surv, cuts),
        ibs=integrated_brier_score(time_, event, surv, cuts, eval_times, censoring),
    )


def _mean(draws: Sequence[Scores]) -> Scores:
    return Scores(
        c_index=sum(d.c_index for d in draws) / len(draws),
        c_td=sum(d.c_td for d in draws) / len(draws),
        ibs=sum(d.ibs for d in draws) / len(draws),
    )


def train_alone(
    plan: Any,
    raw: Any,
    time_: Any,
    event: Any,
    train: Any,
    test: Any,
    *,
    private: bool,
    seed: int = 0,
) -> Scores:
    """The same model and budget trained on one site's rows alone (local-only baseline)."""
    from site_agent.train import LocalTrainer, TrainerConfig
    from survival.schema import Standardization
    from survival.spec import baseline_logits, initial_parameters

    std = Standardization.from_matrix(raw)
    interval, event_k = plan.time_grid.discretize(time_, event)
    events, at_risk = plan.time_grid.interval_counts(time_, event)
    training = plan.training
    config = TrainerConfig(
        rounds=1,
        local_epochs=training.rounds * training.local_epochs,
        batch_size=min(training.batch_size, time_.size),
        learning_rate=training.learning_rate,
        optimizer=training.optimizer,
        max_grad_norm=training.max_grad_norm,
        target_epsilon=plan.privacy.epsilon if private else None,
        target_delta=plan.privacy.delta,
    )
    n_features, k = plan.feature_schema.n_encoded, plan.time_grid.n_intervals
    trainer = LocalTrainer(plan.model, n_features, k, config, n_samples=time_.size, seed=seed)
    start = initial_parameters(
        plan.model, n_features, k, plan.seed, baseline_logits(events, at_risk)
    )
    update = trainer.train_round(start, std.apply(raw), interval, event_k)
    return score(plan, start + update.delta, std.means, std.stds, train, test)


def _print_table(rows: list[tuple[str, Scores]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"\n{'model'.ljust(width)}  {'C-index':>8}  {'C-td':>7}  {'IBS':>7}")
    print("-" * (width + 30))
    for name, s in rows:
        print(f"{name.ljust(width)}  {s.c_index:8.4f}  {s.c_td:7.4f}  {s.ibs:7.4f}")
    print("(common held-out test set: 20% of FLCHAIN, stratified on death, seed 0)")
