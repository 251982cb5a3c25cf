"""A dry-run plan offer at real site agents (the adversarial harness's kits, data and agents; the
test builds the offers a dry run's coordinator sends): each site runs every check of a real
offer and answers with its reasons and ε estimate, but saves no plan, charges nothing, writes
no record of processing, and a later real offer of the same plan is accepted as usual."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from federation.plan import RunPlan
from federation.wire.v1 import federation_pb2 as pb
from site_agent.agent import SiteAgent
from tests.adversarial.harness import (
    Consortium,
    adversarial_plan,
    audit_actions,
    make_consortium,
)

pytestmark = pytest.mark.integration

SITES = ("hospital-a", "hospital-b", "hospital-c")


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    """hospital-b does not map the plan's `kappa` (its data config names no column for it and
    its CSV has none by that name); hospital-c allows at most ε 1 per run (the plan asks 3)."""
    built = make_consortium(tmp_path_factory.mktemp("dry") / "fed", SITES)
    b = built.agents["hospital-b"].handlers
    columns = {k: v for k, v in b.config.data.columns.items() if k != "kappa"}
    b.config = b.config.model_copy(
        update={"data": b.config.data.model_copy(update={"columns": columns})}
    )
    c = built.agents["hospital-c"].handlers
    c.config = c.config.model_copy(
        update={"policy": c.config.policy.model_copy(update={"max_epsilon_per_run": 1.0})}
    )
    try:
        yield built
    finally:
        built.close()


def _offer(plan: RunPlan, run_id: str, *, dry_run: bool) -> pb.Task:
    task = pb.Task(task_id=secrets.token_hex(8), run_id=run_id, kind=pb.TASK_KIND_PLAN_OFFER)
    task.plan_offer.plan_json = plan.canonical_json()
    task.plan_offer.plan_sha256 = plan.sha256()
    task.plan_offer.dry_run = dry_run
    return task


def _plans(agent: SiteAgent) -> list[Path]:
    return sorted(agent.handlers.plans_dir.glob("*.json"))


def test_a_dry_run_reports_refusals_and_estimates_and_keeps_nothing(
    consortium: Consortium,
) -> None:
    plan = adversarial_plan()
    answers = {
        site: agent.handle(_offer(plan, "run-dry", dry_run=True))
        for site, agent in consortium.agents.items()
    }

    a, b, c = (answers[site] for site in SITES)
    assert not a.HasField("error")
    assert b.error.code == pb.TASK_ERROR_DATA and "kappa" in b.error.message
    assert c.error.code == pb.TASK_ERROR_POLICY_REFUSED
    assert "policy.max_epsilon_per_run 1" in c.error.message
    # the estimate: the plan's ε capped by the site's policy, and the lifetime spend so far
    assert a.privacy.epsilon_spent_run == pytest.approx(3.0)
    assert b.privacy.epsilon_spent_run == pytest.approx(3.0)
    assert c.privacy.epsilon_spent_run == pytest.approx(1.0)
    assert all(r.privacy.epsilon_spent_lifetime == 0.0 for r in answers.values())

    for site, agent in consortium.agents.items():
        assert agent.ledger.releases() == [], site  # nothing charged
        assert _plans(agent) == [], site  # no plan saved
        assert agent.records.runs() == [], site  # no record of processing
        assert "run-dry" not in agent.handlers.runs
        assert audit_actions(agent, "plan_accepted") == []
    checked = audit_actions(consortium.agents["hospital-a"], "plan_checked")
    assert [e["run_id"] for e in checked] == ["run-dry"] and checked[0]["dry_run"] is True
    refused = audit_actions(consortium.agents["hospital-c"], "task_refused")
    assert refused[-1]["dry_run"] is True

    # no task of a dry run follows: the site never accepted it
    stats = pb.Task(task_id="t", run_id="run-dry", kind=pb.TASK_KIND_FEDERATED_STATS)
    assert consortium.agents["hospital-a"].handle(stats).error.code == pb.TASK_ERROR_INVALID_TASK

    # a later real offer of the same plan is judged as usual
    real = consortium.agents["hospital-a"].handle(_offer(plan, "run-real", dry_run=False))
    assert not real.HasField("error"), real.error.message
    agent = consortium.agents["hospital-a"]
    assert [p.name for p in _plans(agent)] == ["run-real.json"]
    assert [r["run_id"] for r in agent.records.runs()] == ["run-real"]
    assert [e["run_id"] for e in audit_actions(agent, "plan_accepted")] == ["run-real"]


def test_a_dry_run_under_manual_approval_accepts_with_a_note_and_asks_nobody(
    consortium: Consortium,
) -> None:
    handlers = consortium.agents["hospital-a"].handlers
    auto = handlers.config
    handlers.config = auto.model_copy(
        update={"policy": auto.policy.model_copy(update={"approval": "manual"})}
    )
    try:
        plan = adversarial_plan(rounds=1)
        result = handlers.handle(_offer(plan, "run-dry-manual", dry_run=True))
    finally:
        handlers.config = auto
    assert result.error.code == pb.TASK_ERROR_APPROVAL_PENDING
    assert result.error.message.startswith("would accept; needs manual approval")
    assert handlers.approvals.get(plan.sha256()) is None  # no approval was requested
    assert audit_actions(consortium.agents["hospital-a"], "plan_pending") == []
    checked = audit_actions(consortium.agents["hospital-a"], "plan_checked")
    assert checked[-1]["needs_approval"] is True
