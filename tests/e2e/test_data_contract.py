"""The hospital data contract, end to end over real processes.

hospital-c's CSV is written the way hospital systems export it (`;`-delimited, sex as M/F, `NA`
and `.` for missing values, R's event coding 1 = censored / 2 = dead, follow-up in months, MGUS as
0/1, its own column names), and its site.toml maps exactly that: it takes part in the whole run
and its accepted-plan audit entry counts every row and excludes none. hospital-d exports R's event
coding without saying so, and has few rows: it refuses the plan with a reason that names the
cause and the counts (never a local path), keeps running, and releases nothing.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedctl.localfed import LocalFederation, flchain_hospitals
from federation.wire.v1 import admin_pb2, federation_pb2
from site_agent.ledger import PrivacyLedger
from survival.data import split_hospitals
from tests.e2e.conftest import e2e_plan, site_audit, submit, wait_until

pytestmark = pytest.mark.e2e

HOSPITALS = ("hospital-a", "hospital-b", "hospital-c", "hospital-d")
TRAINING = ("hospital-a", "hospital-b", "hospital-c")
MONTH = 365.25 / 12
EXPORT_COLUMNS = {  # consortium feature -> hospital-c's column
    "age": "age_at_sample",
    "sex": "gender",
    "kappa": "kappa_mg_dl",
    "lambda": "lambda_mg_dl",
    "flc.grp": "flc_decile",
    "creatinine": "creat_mg_dl",
    "mgus": "mgus_dx",
    "sample.yr": "sample_year",
}
EXPORT_MAPPING: dict[str, Any] = {
    "delimiter": ";",
    "na_values": ["NA", "."],
    "id_column": "pat_id",
    "time_unit": "months",
    "event_values": ["2"],
    "censored_values": ["1"],
    "values": {"mgus": {"no": ["0"], "yes": ["1"]}},
}
SMALL_EXPORT_ROWS = 130
KAPPA_AS_IS = (  # the demo plan's kappa, as `fedctl.demo.plan_text` writes it
    'name = "kappa"\nmin = 0.0\nmax = 30.0\nrequired = true\nout_of_bounds = "clip"\n'
    'transform = "none"'
)
UNMAPPED_EVENT = "event: value in neither data.event_values nor data.censored_values"


def _r_style_export(frame: Any, path: Path) -> None:
    """The rows of `frame` (consortium names) as a hospital system writes them."""
    header = ["pat_id", *EXPORT_COLUMNS.values(), "fu_months", "status"]
    lines = [";".join(header)]
    for i, row in enumerate(frame.to_dict("records")):
        creatinine = row["creatinine"]
        cells = [
            f"P{100000 + i}",
            f"{row['age']:g}",
            row["sex"],
            f"{row['kappa']:g}",
            f"{row['lambda']:g}",
            row["flc.grp"],
            ("NA" if i % 2 else ".") if math.isnan(creatinine) else f"{creatinine:g}",
            "1" if row["mgus"] == "yes" else "0",
            row["sample.yr"],
            f"{row['time'] / MONTH:.2f}",
            "2" if row["event"] == 1 else "1",
        ]
        lines.append(";".join(cells))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def contract(tmp_path: Path) -> Iterator[tuple[LocalFederation, dict[str, Any]]]:
    """Four hospitals from FLCHAIN; hospital-c and hospital-d re-exported as described above."""
    fed = LocalFederation(tmp_path / "fed", HOSPITALS, viewer=True)
    fed.prepare()
    train, _test, _csvs, names = flchain_hospitals(fed)
    parts = split_hospitals(train, len(HOSPITALS), "age", seed=0)  # as flchain_hospitals split
    export = fed.workdir / "data" / "hospital-c-export.csv"
    _r_style_export(parts[2], export)
    fed.configure_site(
        "hospital-c", export, EXPORT_COLUMNS, "fu_months", "status", data=EXPORT_MAPPING
    )
    small = parts[3].iloc[:SMALL_EXPORT_ROWS].copy()
    small["event"] = small["event"].map({0: 1, 1: 2})  # R's coding, and site.toml does not say so
    small_csv = fed.workdir / "data" / "hospital-d-small.csv"
    small.rename(columns=names[3]).to_csv(small_csv, index=False)
    columns = {k: v for k, v in names[3].items() if k not in ("time", "event")}
    fed.configure_site("hospital-d", small_csv, columns, names[3]["time"], names[3]["event"])
    facts = {
        "export_rows": len(parts[2]),
        "small_csv": small_csv,
        "small_dead": int((small["event"] == 2).sum()),
    }
    try:
        yield fed, facts
    finally:
        fed.stop_all()


def test_a_mapped_real_export_joins_and_an_unmapped_one_is_refused_with_counts(
    contract: tuple[LocalFederation, dict[str, Any]],
) -> None:
    federation, facts = contract
    dead = facts["small_dead"]
    assert 20 < dead < SMALL_EXPORT_ROWS - 10, dead  # the fixture's premise: deaths to misread
    stub = federation.start_all()
    # the plan models the heavy-tailed kappa as log(1 + kappa): every site encodes it so
    plan = e2e_plan(2, train_timeout=60.0, stage_timeout=10.0)
    logged = plan.replace(KAPPA_AS_IS, KAPPA_AS_IS.replace('"none"', '"log1p"'))
    assert logged != plan
    run_id = submit(stub, logged)
    final = wait_until(stub, run_id, lambda s: False, timeout=300)
    assert final.state == federation_pb2.RUN_STATE_COMPLETED, final.message
    sites = {s.site_id: s for s in final.sites}
    for hospital in TRAINING:
        assert sites[hospital].decision == admin_pb2.PLAN_DECISION_ACCEPTED, sites[hospital]
    card = json.loads(stub.ExportRun(admin_pb2.ExportRunRequest(run_id=run_id)).model_card_json)
    assert card["history"], card
    kappa = next(f for f in card["plan"]["features"] if f["name"] == "kappa")
    assert kappa["transform"] == "log1p"
    for record in card["history"]:  # statistics, both rounds, the evaluation: all three in each
        assert sorted(record["survivors"]) == list(TRAINING), record

    # hospital-c: every row of its export read, none excluded for the codes its mapping covers.
    accepted = [
        detail
        for action, detail in site_audit(federation, "hospital-c")
        if action == "plan_accepted" and detail["run_id"] == run_id
    ]
    assert len(accepted) == 1
    entry = accepted[0]
    assert entry["rows"] == facts["export_rows"]
    assert entry["excluded"] == {}, entry["excluded"]
    assert entry["warnings"] == [], entry["warnings"]  # no inverted-coding or unit warning
    assert 0.7 * facts["export_rows"] < int(entry["training_rows"]) < facts["export_rows"]

    # hospital-d: refused, with the cause and the counts, and no local path.
    refused = sites["hospital-d"]
    assert refused.decision == admin_pb2.PLAN_DECISION_REFUSED
    reason = refused.reason
    assert "below policy.min_cohort_size 100" in reason, reason
    assert f"{SMALL_EXPORT_ROWS} rows read, {SMALL_EXPORT_ROWS - dead} valid" in reason, reason
    assert f"{UNMAPPED_EVENT}: {dead}" in reason, reason
    small_csv: Path = facts["small_csv"]
    for local in (str(small_csv), small_csv.name, str(federation.workdir)):
        assert local not in reason, reason
    shown = subprocess.run(
        [sys.executable, "-m", "fedctl", "status", run_id, "--output", "json"],
        env={"CONCORDIA_FEDCTL_CONFIG": str(federation.operator_config("viewer"))},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    by_site = {s["site_id"]: s for s in json.loads(shown.stdout)["sites"]}
    assert by_site["hospital-d"]["reason"] == reason
    assert any(
        action == "task_refused" and f"{UNMAPPED_EVENT}: {dead}" in str(detail.get("reason"))
        for action, detail in site_audit(federation, "hospital-d")
    )
    # ... it keeps running, still connected, and its ledger has no release at all.
    assert federation.alive("hospital-d")
    online = stub.ListSites(admin_pb2.ListSitesRequest(), timeout=10).sites
    assert any(s.site_id == "hospital-d" and s.state == admin_pb2.SITE_STATE_ONLINE for s in online)
    ledger = PrivacyLedger(
        federation.site_kit("hospital-d") / "state" / "site.sqlite", clock=time.time
    )
    try:
        assert [r for r in ledger.releases() if r["run_id"] == run_id] == []
        assert ledger.releases() == []
    finally:
        ledger.close()
