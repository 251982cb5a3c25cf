"""A dry run (`fedctl run --dry-run`) in the engine and the application object: the offer phase
alone, its answer (how many would accept) as the run's end, no statistics step, no RunFinished
task, a restart that keeps it a dry run, and an audit entry that says it was one."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator import convert, snapshot
from coordinator.effects import Phase, RunFinished, RunStatus
from coordinator.engine import RunEngine
from coordinator.messages import SiteResult
from coordinator.overlaps import ConcurrentRunError
from federation.tasks import TaskKind
from tests.unit.coordinator.test_app import NAMES, Clock, _coordinator
from tests.unit.coordinator.test_engine import PLAN, _plan

pytestmark = pytest.mark.unit


def _accept(engine: RunEngine, site: str, now: float, **fields: object) -> list[object]:
    task = engine.task_for(site)
    assert task is not None and task.kind is TaskKind.PLAN_OFFER
    return list(engine.on_result(site, SiteResult(task.task_id, task.kind, **fields), now))  # type: ignore[arg-type]


def test_a_dry_run_ends_with_the_offer_phase_and_reports_each_site() -> None:
    engine, _ = RunEngine.start("run-dry", _plan(), NAMES, now=0.0, dry_run=True)
    offer = engine.task_for("site-0")
    assert offer is not None
    assert convert.task_to_wire(offer, engine, lambda _: None).plan_offer.dry_run
    _accept(engine, "site-0", 1.0, epsilon_run=3.0, epsilon_lifetime=0.5)
    # a manual-approval site's "approval pending" is an accept with a note: a dry run waits
    # for nobody
    _accept(
        engine,
        "site-1",
        1.0,
        error_code="approval_pending",
        error_message="would accept; needs manual approval at the site (plan abc)",
        epsilon_run=3.0,
        epsilon_lifetime=0.0,
    )
    effects = _accept(
        engine,
        "site-2",
        1.0,
        error_code="policy_refused",
        error_message="plan.privacy.epsilon 3 exceeds policy.max_epsilon_per_run 1",
        epsilon_run=1.0,
        epsilon_lifetime=2.0,
    )
    progress = engine.progress()
    assert progress.status is RunStatus.COMPLETED  # 2 would accept, quorum 2
    assert progress.message == "dry run: 2 of 3 sites would accept (quorum 2); refused: site-2"
    assert any(isinstance(e, RunFinished) for e in effects)
    assert progress.accepted == ("site-0", "site-1")
    assert "needs manual approval" in progress.awaiting["site-1"]
    assert progress.privacy["site-2"] == {"epsilon_run": 1.0, "epsilon_lifetime": 2.0}
    # no statistics step, and no RunFinished task: the sites kept nothing of a dry run
    assert engine.history == [] and engine.tasks == {}
    assert progress.phase is Phase.DONE
    wire = {s.site_id: s for s in convert.run_status(engine, None, []).sites}
    assert wire["site-2"].epsilon_spent == 1.0 and wire["site-2"].epsilon_lifetime == 2.0
    assert "max_epsilon_per_run" in wire["site-2"].reason
    assert "needs manual approval" in wire["site-1"].reason


def test_a_dry_run_below_the_quorum_fails_at_the_offer_deadline() -> None:
    plan = _plan()
    engine, _ = RunEngine.start("run-dry", plan, NAMES, now=0.0, dry_run=True)
    _accept(engine, "site-0", 1.0)
    _accept(engine, "site-1", 1.0, error_code="data", error_message="feature 'x' not found")
    assert engine.tick(plan.secagg.offer_timeout_s / 2) == []  # site-2 may still answer
    engine.tick(plan.secagg.offer_timeout_s + 1)
    progress = engine.progress()
    assert progress.status is RunStatus.FAILED
    assert progress.message == (
        "dry run: 1 of 3 sites would accept (quorum 2); refused: site-1; no answer: site-2"
    )
    assert engine.tasks == {} and progress.phase is Phase.DONE


def test_a_restarted_coordinator_keeps_a_dry_run_a_dry_run() -> None:
    engine, _ = RunEngine.start("run-dry", _plan(), NAMES, now=0.0, dry_run=True)
    _accept(engine, "site-0", 1.0)
    state, vectors = snapshot.dump(engine)
    assert state["dry_run"] is True
    restored, _ = snapshot.restore(state, vectors, now=2.0)
    assert restored.dry_run
    _accept(restored, "site-1", 3.0)
    _accept(restored, "site-2", 3.0)
    assert restored.progress().status is RunStatus.COMPLETED
    assert restored.history == [] and restored.tasks == {}
    # a snapshot written before dry runs existed is a real run
    del state["dry_run"]
    assert not snapshot.load(state, vectors).dry_run


def test_a_dry_run_is_audited_as_one_and_skips_the_overlap_check(tmp_path: Path) -> None:
    clock = Clock()
    app = _coordinator(tmp_path / "c.sqlite", clock)
    text = PLAN.format(rounds=1, attempts=3)
    live = app.submit(text, "toml", "urn:op")
    with pytest.raises(ConcurrentRunError):
        app.submit(text, "toml", "urn:op")
    dry = app.submit(text, "toml", "urn:op", dry_run=True)  # charges nothing: no overlap
    submitted = [
        e.detail for e in app.store.audit.entries(after=0, limit=100) if e.action == "run_submitted"
    ]
    assert submitted[-1]["run_id"] == dry.run_id and submitted[-1]["dry_run"] is True
    assert "dry_run" not in submitted[0] and "concurrent" not in submitted[-1]
    # nor does a live dry run count against a real submission
    app.stop(live.run_id, "test", "urn:op")
    assert app.overlaps(live.plan, NAMES) == []
    for site in NAMES:
        task = dry.task_for(site)
        assert task is not None
        app.take_result(dry, site, SiteResult(task.task_id, task.kind), 0)
    assert dry.progress().status is RunStatus.COMPLETED
    row = app.store.run(dry.run_id)
    assert row is not None and row.state["dry_run"] is True
    assert app.store.aggregates(dry.run_id) == []
