"""Manual approval: the store, the approve/reject commands, and their bad input."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedctl.demo import plan_text
from fedctl.localfed import LocalFederation, flchain_hospitals
from federation.audit import AuditLog
from federation.plan import parse_plan
from site_agent.__main__ import main
from site_agent.approvals import ApprovalError, ApprovalStore

pytestmark = pytest.mark.unit

PLAN = parse_plan(plan_text(2))


def test_a_plan_is_pending_once_then_decided_once(tmp_path: Path) -> None:
    store = ApprovalStore(tmp_path / "site.sqlite")
    assert store.get(PLAN.sha256()) is None
    assert store.request(PLAN) is True
    assert store.request(PLAN) is False  # asked again: still one pending entry
    pending = store.get(PLAN.sha256())
    assert pending is not None and pending.status == "pending" and pending.decided_by is None
    decided = store.decide(PLAN.sha256(), "approved", "dr. dpo", "ethics ref 2026-17")
    assert (decided.status, decided.decided_by) == ("approved", "dr. dpo")
    with pytest.raises(ApprovalError, match=r"already approved by dr\. dpo"):
        store.decide(PLAN.sha256(), "rejected", "someone else")
    assert store.plan(PLAN.sha256()) == PLAN


@pytest.mark.parametrize(
    ("sha", "by", "needle"),
    [("0" * 64, "dpo", "no plan with SHA-256"), (None, "  ", "say who decides")],
)
def test_bad_decisions_change_nothing(
    tmp_path: Path, sha: str | None, by: str, needle: str
) -> None:
    store = ApprovalStore(tmp_path / "site.sqlite")
    store.request(PLAN)
    with pytest.raises(ApprovalError, match=needle):
        store.decide(sha or PLAN.sha256(), "approved", by)
    still = store.get(PLAN.sha256())
    assert still is not None and still.status == "pending"


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Path]:
    fed = LocalFederation(tmp_path / "fed", ("hospital-a", "hospital-b"))
    fed.prepare()
    flchain_hospitals(fed, {"approval": "manual"})
    yield fed.site_kit("hospital-a") / "site.toml"


def test_the_commands_list_approve_and_audit(kit: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = kit.parent / "state"
    state.mkdir(exist_ok=True)
    ApprovalStore(state / "site.sqlite").request(PLAN)
    assert main(["approvals", "--config", str(kit), "--output", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(a["plan_sha256"], a["status"]) for a in listed] == [(PLAN.sha256(), "pending")]
    assert (
        main(["approve", "--config", str(kit), "--plan-sha256", PLAN.sha256(), "--by", "dpo"]) == 0
    )
    assert "approved by dpo" in capsys.readouterr().out
    entries = AuditLog(state / "audit.sqlite", clock=time.time).entries()
    assert [(e.action, e.detail["by"]) for e in entries] == [("plan_approved", "dpo")]
    # unknown hash and a second decision: one line each, exit 2, nothing changed
    assert main(["reject", "--config", str(kit), "--plan-sha256", "f" * 64, "--by", "x"]) == 2
    assert "no plan with SHA-256" in capsys.readouterr().err
    assert main(["reject", "--config", str(kit), "--plan-sha256", PLAN.sha256(), "--by", "x"]) == 2
    assert "already approved" in capsys.readouterr().err
    assert len(AuditLog(state / "audit.sqlite", clock=time.time).entries()) == 1


def test_a_manual_site_answers_pending_until_a_person_decides(tmp_path: Path) -> None:
    from federation.wire.v1 import federation_pb2 as pb
    from tests.adversarial.harness import CheatingCoordinator, adversarial_plan, make_consortium

    consortium = make_consortium(
        tmp_path / "fed", ("hospital-a", "hospital-b", "hospital-c"), {"approval": "manual"}
    )
    try:
        agent = consortium.agents["hospital-a"]
        coordinator = CheatingCoordinator(consortium, adversarial_plan(), "run-approval")

        def offer() -> pb.TaskResult:
            task = coordinator.task(pb.TASK_KIND_PLAN_OFFER)
            task.plan_offer.plan_json = coordinator.plan.canonical_json()
            return agent.handle(task)

        sha = coordinator.plan.sha256()
        first, second = offer(), offer()
        for result in (first, second):
            assert result.error.code == pb.TASK_ERROR_APPROVAL_PENDING
            assert result.error.message == f"awaiting approval at the site (plan {sha[:12]})"
        entries = agent.audit.entries(limit=1000)
        assert [e.action for e in entries].count("plan_pending") == 1  # audited once
        assert "run-approval" not in agent.handlers.runs  # in no session before approval
        ApprovalStore(agent.config.state_dir / "site.sqlite").decide(sha, "approved", "dpo")
        accepted = offer()
        assert not accepted.HasField("error"), accepted.error.message
        detail = [e.detail for e in agent.audit.entries(limit=1000) if e.action == "plan_accepted"]
        assert detail[-1]["approved_by"] == "dpo"
        other = consortium.agents["hospital-b"]
        task = coordinator.task(pb.TASK_KIND_PLAN_OFFER)
        task.plan_offer.plan_json = coordinator.plan.canonical_json()
        assert other.handle(task).error.code == pb.TASK_ERROR_APPROVAL_PENDING
        ApprovalStore(other.config.state_dir / "site.sqlite").decide(sha, "rejected", "board", "no")
        refused = other.handle(task)
        assert refused.error.code == pb.TASK_ERROR_POLICY_REFUSED
        assert refused.error.message == "plan rejected at the site by board: no"
    finally:
        consortium.close()
