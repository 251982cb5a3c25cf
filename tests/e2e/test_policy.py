"""Local policy and the lifetime budget, end to end: a site refuses a plan outside its policy, the
operator sees why, and a site whose lifetime budget cannot cover another run releases nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from fedctl.localfed import LocalFederation
from federation.wire.v1 import admin_pb2, federation_pb2
from site_agent.ledger import PrivacyLedger
from tests.e2e.conftest import e2e_plan, site_audit, submit, wait_until

pytestmark = pytest.mark.e2e


def _site(status: admin_pb2.RunStatus, site_id: str) -> admin_pb2.SiteRunStatus:
    return next(s for s in status.sites if s.site_id == site_id)


def _ledger(federation: LocalFederation, hospital: str) -> PrivacyLedger:
    return PrivacyLedger(federation.site_kit(hospital) / "state" / "site.sqlite", clock=time.time)


def test_policy_refusal_is_visible_and_the_lifetime_budget_holds(
    federation: LocalFederation,
) -> None:
    federation.start_coordinator()
    federation.start_site("hospital-a")
    federation.start_site("hospital-b", env={"CONCORDIA_POLICY_LIFETIME_EPSILON": "4.0"})
    federation.start_site("hospital-c", env={"CONCORDIA_POLICY_MAX_EPSILON_PER_RUN": "1.0"})
    stub = federation.admin()
    federation.wait_for_sites(stub, 3)
    plan = e2e_plan(2)

    # Run 1: hospital-c's policy allows ε ≤ 1 per run; the plan asks for 3.
    first = submit(stub, plan)
    status = wait_until(stub, first, lambda s: False, timeout=240)
    assert status.state == federation_pb2.RUN_STATE_COMPLETED, status.message
    refused = _site(status, "hospital-c")
    assert refused.decision == admin_pb2.PLAN_DECISION_REFUSED
    assert "policy.max_epsilon_per_run 1" in refused.reason
    assert _ledger(federation, "hospital-c").releases() == []
    assert any(
        action == "task_refused" and "max_epsilon_per_run" in str(detail.get("reason"))
        for action, detail in site_audit(federation, "hospital-c")
    )
    # The operator sees the same reason through fedctl.
    shown = subprocess.run(
        [sys.executable, "-m", "fedctl", "status", first, "--output", "json"],
        env={"CONCORDIA_FEDCTL_CONFIG": str(federation.operator_config())},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    sites = {s["site_id"]: s for s in json.loads(shown.stdout)["sites"]}
    assert "policy.max_epsilon_per_run 1" in sites["hospital-c"]["reason"]
    spent_b = _ledger(federation, "hospital-b").epsilon_lifetime(1e-5)
    assert 1.0 < spent_b <= 3.0 + 1e-9

    # Run 2: hospital-b has 4 - spent_b < 3 left, so it refuses up front; with hospital-c still
    # refusing, only one site accepts and the run fails for want of a quorum.
    second = submit(stub, plan)
    status = wait_until(stub, second, lambda s: False, timeout=120)
    assert status.state == federation_pb2.RUN_STATE_FAILED
    assert "remaining lifetime budget" in _site(status, "hospital-b").reason
    assert "hospital-b" in status.message
    ledger_b = _ledger(federation, "hospital-b")
    assert [r for r in ledger_b.releases() if r["run_id"] == second] == []
    assert ledger_b.epsilon_lifetime(1e-5) == pytest.approx(spent_b)
