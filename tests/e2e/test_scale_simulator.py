"""Thirty real site agents in one simulator process against a real coordinator: every one of them
joins the secure sum of every release, and each ledger holds what that site spent."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from fedctl.localfed import LocalFederation, flchain_hospitals
from federation.plan import parse_plan
from federation.wire.v1 import federation_pb2
from site_agent.ledger import PrivacyLedger
from tests.e2e.conftest import coordinator_store, e2e_plan, submit, wait_until

pytestmark = pytest.mark.e2e

N_SITES = 30


def test_thirty_simulated_sites_complete_a_run_with_every_site_in_every_sum(
    tmp_path: Path,
) -> None:
    sites = tuple(f"site-{i:03d}" for i in range(N_SITES))
    federation = LocalFederation(tmp_path / "fed", sites)
    federation.prepare()
    flchain_hospitals(federation, {"min_cohort_size": 20})  # ~200 patients per site
    text = e2e_plan(1, train_timeout=300.0, stage_timeout=120.0)
    plan = parse_plan(text, "toml")
    try:
        federation.start_coordinator()
        federation.start_simulated_sites()
        stub = federation.admin()
        federation.wait_ready(stub)
        federation.wait_for_sites(stub, N_SITES, timeout=300)
        run_id = submit(stub, text)
        status = wait_until(stub, run_id, lambda s: False, timeout=600)
        assert status.state == federation_pb2.RUN_STATE_COMPLETED, status.message
    finally:
        federation.stop_all()
    with sqlite3.connect(coordinator_store(federation)) as conn:
        rows = conn.execute("SELECT action, detail FROM audit_log ORDER BY seq").fetchall()
    sums = [json.loads(d) for a, d in rows if a == "aggregated"]
    assert {s["purpose"] for s in sums} >= {"stats", "update"}
    for aggregate in sums:
        assert sorted(aggregate["survivors"]) == sorted(sites), aggregate["purpose"]
    for site in sites:
        ledger = PrivacyLedger(federation.site_kit(site) / "state" / "site.sqlite", clock=time.time)
        spent = ledger.epsilon_run(run_id, plan.privacy.delta)
        assert 0 < spent <= plan.privacy.epsilon + 1e-9, site
