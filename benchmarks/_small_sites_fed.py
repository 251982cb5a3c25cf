"""Helpers of `small_sites_bench.py`: one federation of a split's sites, run and measured.

`run_federation`: one `LocalFederation` (coordinator + one agent per site, separate processes,
loopback mutual TLS, secure aggregation), as `fedctl demo` drives it, running the same plan
`repeats` times in a row; each run is exported and scored like the demo's, its ε read from the
export and recomputed from every site's own ledger (`recompute_epsilon`, `ledger_epsilon`), its
round timings read from the coordinator's audit log (`round_timing`). Kept apart from
`_small_sites.py` (splits, rows, plans, in-process models): this is the only part that starts
processes and reads their databases.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _small_sites import SplitData, data_config
from round_bench import STAGES  # a round's task kinds, in order

from fedctl.demo import Scores, score
from fedctl.localfed import LocalFederation
from fedctl.runs import exported_vector
from federation.plan import RunPlan, parse_plan
from federation.wire.v1 import admin_pb2, federation_pb2
from site_agent.accounting import Entry, epsilon_of

# ---------------------------------------------------------------------- one federation
TERMINAL = {
    federation_pb2.RUN_STATE_COMPLETED,
    federation_pb2.RUN_STATE_FAILED,
    federation_pb2.RUN_STATE_STOPPED,
}


class RunFailed(RuntimeError):
    """A federated run did not complete (the message has the coordinator's reason)."""


@dataclass
class FedRun:
    """One completed federated run, scored on the common test split."""

    run_id: str
    scores: Scores
    epsilon: float  # max over sites of the export's per-site ε
    wall_s: float  # submitted -> completed, by the coordinator's clock
    privacy: dict[str, float] = field(default_factory=dict)  # site -> reported ε of the run
    epsilon_recomputed: float | None = None  # max over sites, from their ledgers
    epsilon_rel_diff: float | None = None  # max over sites of |reported - recomputed| / recomputed
    epsilon_own_recomputed: float | None = None  # max over sites, each site's own noise alone
    timing: dict[str, Any] = field(default_factory=dict)


def wait_for_run(stub: Any, run_id: str, timeout: float, log: Any) -> admin_pb2.RunStatus:
    """Poll until the run ends; one line per state change, and at most one per 30 s otherwise."""
    deadline = time.monotonic() + timeout
    shown, shown_at = "", 0.0
    while time.monotonic() < deadline:
        status = stub.GetRun(admin_pb2.GetRunRequest(run_id=run_id))
        state = federation_pb2.RunState.Name(status.state).removeprefix("RUN_STATE_").lower()
        if state != shown or time.monotonic() - shown_at > 30:
            log(f"    {run_id} {state} round {status.round}/{status.total_rounds}")
            shown, shown_at = state, time.monotonic()
        if status.state in TERMINAL:
            if status.state != federation_pb2.RUN_STATE_COMPLETED:
                reasons = [f"{s.site_id}: {s.reason}" for s in status.sites if s.reason]
                raise RunFailed("; ".join([status.message or "run did not complete", *reasons]))
            return status
        time.sleep(0.5)
    raise RunFailed(f"run {run_id} did not finish within {timeout:.0f} s")


def run_federation(
    split: SplitData,
    workdir: Path,
    csvs: Mapping[str, Path],
    text: str,
    policy: Mapping[str, Any],
    repeats: int,
    *,
    holdout: float,
    timeout: float,
    log: Any = print,
) -> list[FedRun]:
    """`repeats` runs of the plan `text` in one local federation of the split's sites (each
    site's policy is `policy`, with a lifetime budget for all the repeats)."""
    federation = LocalFederation(workdir, split.site_names)
    federation.prepare()
    per_run = float(policy.get("max_epsilon_per_run", 3.0))
    site_policy = {"lifetime_epsilon": per_run * repeats + 0.5, **policy}
    for site in split.sites:
        config = data_config(split, site, csvs[site.name], holdout)
        federation.configure_site(
            site.name,
            config.csv,
            config.columns,
            config.time_column,
            config.event_column,
            site_policy,
            {"split_salt": config.split_salt, "holdout_fraction": holdout},
        )
    runs: list[FedRun] = []
    try:
        started = time.monotonic()
        stub = federation.start_all(timeout=300)
        log(f"    {len(split.sites)} sites online after {time.monotonic() - started:.0f} s")
        for _ in range(repeats):
            response = stub.SubmitRun(
                admin_pb2.SubmitRunRequest(format=admin_pb2.PLAN_FORMAT_TOML, plan_text=text)
            )
            if response.errors:
                raise RunFailed("plan refused: " + "; ".join(e.message for e in response.errors))
            status = wait_for_run(stub, response.run_id, timeout, log)
            export = stub.ExportRun(admin_pb2.ExportRunRequest(run_id=response.run_id))
            runs.append(scored_run(split, export, status))
            log(
                f"    {response.run_id}: C {runs[-1].scores.c_index:.4f} IBS"
                f" {runs[-1].scores.ibs:.4f} ε {runs[-1].epsilon:.3f} in {runs[-1].wall_s:.0f} s"
            )
    finally:
        federation.stop_all()
    store = federation.kits / "coordinator" / "coordinator.sqlite"
    for run in runs:
        recompute_epsilon(run, federation, text)
        run.timing = round_timing(store, run.run_id)
    return runs


def scored_run(
    split: SplitData, export: admin_pb2.ExportRunResponse, status: admin_pb2.RunStatus
) -> FedRun:
    """Score the export as `fedctl demo` does (card standardisation, common test split)."""
    card = json.loads(export.model_card_json)
    plan = RunPlan.model_validate(card["plan"])
    vector = exported_vector(export, plan)
    std = card["standardization"]
    scores = score(plan, vector, std["means"], std["stds"], split.train, split.test)
    privacy = {site: float(p["epsilon_run"]) for site, p in card["privacy"].items()}
    return FedRun(
        run_id=export.run_id,
        scores=scores,
        epsilon=max(privacy.values()),
        wall_s=(status.updated_unix_ms - status.submitted_unix_ms) / 1000.0,
        privacy=privacy,
    )


LEDGER_PARTITIONS = ("train", "holdout")
"""Disjoint partitions composed in parallel; a release on `both` (a site that holds nothing out
trains on every row) reads patients of each, so it composes into both."""


def _entries(rows: list[dict[str, Any]], sigma_column: str) -> dict[str, list[Entry]]:
    groups: dict[str, list[Entry]] = {p: [] for p in (*LEDGER_PARTITIONS, "both")}
    for row in rows:
        mechanism = row.get("mechanism") or "gaussian"
        sigma = row.get(sigma_column)
        if sigma is None:  # a Gaussian release has no separate own-noise σ: it is the same
            sigma = row["noise_multiplier"]
        skellam = mechanism == "skellam"
        entry = Entry(
            float(sigma),
            float(row["sample_rate"]),
            int(row["steps"]),
            mechanism,
            float(row["l2_sensitivity"]) if skellam else None,
            float(row["l1_sensitivity"]) if skellam else None,
        )
        groups.setdefault(row["partition"], []).append(entry)
    return groups


def ledger_epsilon(database: Path, run_id: str, delta: float) -> dict[str, float]:
    """A run's ε at one site recomputed from its ledger's logged mechanisms by `epsilon_of`: per
    partition the composition of its releases (and of those on `both`), then the max over the
    disjoint partitions. `assumed` uses each release's σ (for a distributed release: the noise
    of the sum if the site's `trusted_noise_sites` are honest), `own` the σ of the site's own
    noise share alone (the same σ for a Gaussian release). The site reports the assumed view
    as its `epsilon_run`."""
    with sqlite3.connect(database) as conn:
        conn.row_factory = sqlite3.Row
        rows = [
            dict(r)
            for r in conn.execute(
                "SELECT * FROM ledger_releases WHERE run_id = ? ORDER BY id", (run_id,)
            )
        ]
    if not rows:
        return {"assumed": 0.0, "own": 0.0}
    kind = rows[0]["accountant"]
    out = {}
    for view, column in (("assumed", "noise_multiplier"), ("own", "own_noise_multiplier")):
        groups = _entries(rows, column)
        out[view] = max(
            epsilon_of([*groups[p], *groups["both"]], delta, kind)  # type: ignore[arg-type]
            for p in LEDGER_PARTITIONS
        )
    return out


def recompute_epsilon(run: FedRun, federation: LocalFederation, text: str) -> None:
    """`epsilon_recomputed`: max over sites of the assumed view, and its max relative difference
    from the ε each site reported (export); `epsilon_own_recomputed`: the own-noise view."""
    delta = parse_plan(text).privacy.delta
    diffs, assumed, own = [], [], []
    for site, reported in run.privacy.items():
        database = federation.site_kit(site) / "state" / "site.sqlite"
        views = ledger_epsilon(database, run.run_id, delta)
        assumed.append(views["assumed"])
        own.append(views["own"])
        diffs.append(abs(reported - views["assumed"]) / max(views["assumed"], 1e-12))
    run.epsilon_recomputed = max(assumed)
    run.epsilon_own_recomputed = max(own)
    run.epsilon_rel_diff = max(diffs)


def round_timing(store: Path, run_id: str) -> dict[str, Any]:
    """The training phase by the coordinator's audit log: from the statistics aggregate (after
    which the first round's TRAIN tasks go out) to the last update aggregate. `rounds_per_s`
    counts the first round, which also carries what a run does once (σ calibrated for the
    run, first calls into torch); `steady_rounds_per_s` starts at the first round's aggregate,
    so it is the round latency alone; `round_s_median` is the median round, `stage_s_median`
    its stages (`stage_timeline`)."""
    with sqlite3.connect(store) as conn:
        rows = conn.execute(
            "SELECT ts, detail FROM audit_log WHERE action = 'aggregated' ORDER BY seq"
        ).fetchall()
    stats: float | None = None
    updates: dict[int, float] = {}
    for ts, detail_text in rows:
        detail = json.loads(detail_text)
        if detail.get("run_id") != run_id:
            continue
        if detail.get("purpose") == "stats" and stats is None:
            stats = float(ts)
        elif detail.get("purpose") == "update":
            updates[int(detail["round"])] = float(ts)  # the last attempt of a round counts
    if stats is None or not updates:
        return {}
    marks = [stats, *(updates[r] for r in sorted(updates))]
    train_s = marks[-1] - marks[0]
    gaps = [b - a for a, b in itertools.pairwise(marks)]
    return {
        "rounds": float(len(updates)),
        "train_s": train_s,
        "rounds_per_s": len(updates) / train_s if train_s > 0 else float("nan"),
        "steady_rounds_per_s": (
            (len(marks) - 2) / (marks[-1] - marks[1]) if marks[-1] > marks[1] else float("nan")
        ),
        "round_s_median": statistics.median(gaps),
        "stage_s_median": stage_timeline(store, run_id),
    }


def stage_timeline(store: Path, run_id: str) -> dict[str, float]:
    """Median seconds each stage of a training round takes at the coordinator, from the last
    result of the stage before (the previous round's last Unmask for `train`) to its own last
    result, over the rounds after the first: where a round's latency goes."""
    with sqlite3.connect(store) as conn:
        rows = conn.execute(
            "SELECT ts, detail FROM audit_log WHERE action = 'result' ORDER BY seq"
        ).fetchall()
    last: dict[tuple[int, str], float] = {}
    for ts, detail_text in rows:
        d = json.loads(detail_text)
        ours = d.get("run_id") == run_id and d.get("kind") in STAGES and "error" not in d
        if ours and (d["kind"] == "train" or d.get("purpose") == "update"):
            last[(int(d["round"]), d["kind"])] = float(ts)
    rounds = sorted({r for r, _ in last})
    spans: dict[str, list[float]] = {kind: [] for kind in STAGES}
    for previous, current in itertools.pairwise(rounds):
        marks = [last.get((previous, STAGES[-1])), *(last.get((current, k)) for k in STAGES)]
        for kind, (a, b) in zip(STAGES, itertools.pairwise(marks), strict=True):
            if a is not None and b is not None:
                spans[kind].append(b - a)
    return {kind: statistics.median(v) for kind, v in spans.items() if v}
