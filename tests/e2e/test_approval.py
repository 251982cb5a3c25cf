"""Manual approval end to end: a site whose policy waits for a person blocks nothing but itself.

hospital-c runs with `policy.approval = "manual"`. The operator sees it awaiting approval (with
the plan hash to approve), the run goes ahead with the other two once the offer deadline passes,
hospital-c releases nothing; after a person approves the plan at the site, the next run of the
same plan includes it.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from fedctl.localfed import LocalFederation
from federation.plan import parse_plan
from federation.wire.v1 import admin_pb2, federation_pb2
from site_agent.ledger import PrivacyLedger
from tests.e2e.conftest import e2e_plan, site_audit, submit, wait_until

pytestmark = pytest.mark.e2e


def _site(status: admin_pb2.RunStatus, site_id: str) -> admin_pb2.SiteRunStatus:
    return next(s for s in status.sites if s.site_id == site_id)


def test_a_pending_site_blocks_only_itself_until_approved(federation: LocalFederation) -> None:
    federation.start_coordinator()
    federation.start_site("hospital-a")
    federation.start_site("hospital-b")
    federation.start_site("hospital-c", env={"CONCORDIA_POLICY_APPROVAL": "manual"})
    stub = federation.admin()
    federation.wait_for_sites(stub, 3)
    plan = e2e_plan(1).replace("[secagg]", "[secagg]\noffer_timeout_s = 4.0")
    sha = parse_plan(plan).sha256()

    first = submit(stub, plan)
    waiting = wait_until(stub, first, lambda s: "awaiting" in _site(s, "hospital-c").reason, 60)
    c = _site(waiting, "hospital-c")
    assert c.decision == admin_pb2.PLAN_DECISION_PENDING
    assert c.reason == f"awaiting approval at the site (plan {sha[:12]})"
    status = wait_until(stub, first, lambda s: False, timeout=240)
    assert status.state == federation_pb2.RUN_STATE_COMPLETED, status.message
    assert _site(status, "hospital-c").decision == admin_pb2.PLAN_DECISION_PENDING
    ledger = PrivacyLedger(federation.site_kit("hospital-c") / "state" / "site.sqlite", time.time)
    assert ledger.releases(first) == []
    assert federation.alive("hospital-c")

    decided = subprocess.run(
        [sys.executable, "-m", "site_agent", "approve", "--config",
         str(federation.site_kit("hospital-c") / "site.toml"),
         "--plan-sha256", sha, "--by", "dr. dpo"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert decided.returncode == 0, decided.stderr
    second = submit(stub, plan)
    status = wait_until(stub, second, lambda s: False, timeout=240)
    assert status.state == federation_pb2.RUN_STATE_COMPLETED, status.message
    assert _site(status, "hospital-c").decision == admin_pb2.PLAN_DECISION_ACCEPTED
    assert ledger.releases(second)
    accepted = [d for a, d in site_audit(federation, "hospital-c") if a == "plan_accepted"]
    assert accepted[-1]["approved_by"] == "dr. dpo"
