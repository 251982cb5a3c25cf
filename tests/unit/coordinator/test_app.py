"""The application object without gRPC: what it persists and audits for each engine effect, how
a restarted coordinator resumes from the store, and the injected fault hooks."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from coordinator.app import Coordinator
from coordinator.effects import Phase, RunStatus
from coordinator.messages import ResultRejected, SiteResult
from coordinator.store import CoordinatorStore
from federation.faults import CrashPoint, Faults
from tests.unit.coordinator.test_engine import PLAN, FakeSite

pytestmark = pytest.mark.unit

NAMES = ["site-0", "site-1", "site-2"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _coordinator(path: Path, clock: Clock, faults: Faults | None = None) -> Coordinator:
    store = CoordinatorStore(path, clock=clock)
    for site in NAMES:
        store.record_hello(site, f"PEM {site}", "1.0", {})
    return Coordinator(store, clock=clock, faults=faults)


def _drive(app: Coordinator, sites: dict[str, FakeSite], until: Phase | None = None) -> None:
    for _ in range(500):
        progress = next(iter(app.engines.values())).progress()
        if progress.phase in (until, Phase.FINISHING, Phase.DONE):
            return
        for name in NAMES:
            found = app.find_task(name)
            if found is not None:
                engine, task = found
                result = sites[name].answer(task, engine)
                app.take_result(engine, name, result, len(result.payload))


def _actions(app: Coordinator) -> list[str]:
    return [e.action for e in app.store.audit.entries(after=0, limit=10_000)]


def test_a_run_is_persisted_and_audited_step_by_step(tmp_path: Path) -> None:
    clock = Clock()
    app = _coordinator(tmp_path / "c.sqlite", clock)
    engine = app.submit(PLAN.format(rounds=1, attempts=3), "toml", "urn:op")
    sites = {n: FakeSite(n, np.random.default_rng(i)) for i, n in enumerate(NAMES)}
    _drive(app, sites)
    assert engine.progress().status is RunStatus.COMPLETED
    actions = _actions(app)
    assert actions[:4] == ["hello", "hello", "hello", "run_submitted"]
    assert actions.count("aggregated") == 3  # statistics, update, metrics
    assert actions.count("result") == 3 * (1 + 3 * 6)  # offer, then 3 steps × (local + 5 stages)
    stored = app.store.aggregates(engine.run_id)
    assert sorted((r, p) for p, r, *_ in stored) == [(0, "stats"), (1, "metrics"), (1, "update")]
    row = app.store.run(engine.run_id)
    assert row is not None and row.status == "completed" and row.state["phase"] == "finishing"
    assert app.store.round_vector(engine.run_id) is not None
    # the sites are told, then the engine is done and dropped
    for name in NAMES:
        found = app.find_task(name)
        assert found is not None
        done_engine, task = found
        app.take_result(done_engine, name, SiteResult(task.task_id, task.kind), 0)
    app.tick()
    assert app.engines == {}
    assert app.store.audit.verify().ok


def test_a_rejected_result_is_audited_and_changes_nothing(tmp_path: Path) -> None:
    app = _coordinator(tmp_path / "c.sqlite", Clock())
    engine = app.submit(PLAN.format(rounds=1, attempts=3), "toml", "urn:op")
    task = engine.task_for("site-0")
    assert task is not None
    assert app.take_result(engine, "site-0", SiteResult(task.task_id, task.kind), 0) is False
    with pytest.raises(ResultRejected):
        app.take_result(engine, "site-0", SiteResult("not-a-task", task.kind), 0)
    before = app.store.run(engine.run_id)
    assert app.take_result(engine, "site-0", SiteResult(task.task_id, task.kind), 0) is True
    assert _actions(app)[-2:] == ["result", "result_rejected"]  # a duplicate is not audited
    assert app.store.run(engine.run_id) == before  # nor saved again


def test_the_clock_is_audited_as_run_progress(tmp_path: Path) -> None:
    clock = Clock()
    app = _coordinator(tmp_path / "c.sqlite", clock)
    engine = app.submit(PLAN.format(rounds=1, attempts=3), "toml", "urn:op")
    app.tick()
    assert "run_progress" not in _actions(app)  # nothing moved
    clock.now += 121.0  # the offer window closes with nobody answering
    app.tick()
    progress = engine.progress()
    assert progress.status is RunStatus.FAILED
    entry = app.store.audit.entries(after=0, limit=100)[-1]
    assert entry.action == "run_progress"
    assert entry.detail == progress.audit_detail()
    assert entry.detail["status"] == "failed" and entry.detail["phase"] == "finishing"


def test_a_restarted_coordinator_resumes_mid_secagg_with_a_retry(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "c.sqlite"
    app = _coordinator(path, clock)
    engine = app.submit(PLAN.format(rounds=1, attempts=3), "toml", "urn:op")
    sites = {n: FakeSite(n, np.random.default_rng(i)) for i, n in enumerate(NAMES)}
    _drive(app, sites, until=Phase.TRAIN)
    for name in NAMES:  # train, so that the update session opens
        found = app.find_task(name)
        assert found is not None
        result = sites[name].answer(found[1], found[0])
        app.take_result(found[0], name, result, 0)
    assert engine.progress().secagg_stage is not None
    app.store.close()  # the process dies here

    again = Coordinator(CoordinatorStore(path, clock=clock), clock=clock)
    assert again.resume() == [engine.run_id]
    resumed = again.engines[engine.run_id]
    progress = resumed.progress()
    assert (progress.phase, progress.attempt) == (Phase.TRAIN, 1)
    assert "coordinator restarted" in progress.message
    assert _actions(again)[-1] == "run_resumed"
    _drive(again, sites)
    assert resumed.progress().status is RunStatus.COMPLETED
    (update,) = [a for a in again.store.aggregates(engine.run_id) if a[0] == "update"]
    assert update[2] == 1  # the retried attempt


class Killed(Exception):
    pass


@pytest.fixture
def kills(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """os.kill recorded and turned into an exception, instead of killing pytest."""
    calls: list[tuple[int, int]] = []

    def kill(pid: int, sig: int) -> None:
        calls.append((pid, sig))
        raise Killed

    monkeypatch.setattr(os, "kill", kill)
    return calls


def test_crash_points_come_from_the_injected_faults(
    tmp_path: Path, kills: list[tuple[int, int]]
) -> None:
    """Kind = the task kind, purpose = the step's purpose or "-", round = the engine's round."""
    faults = Faults((CrashPoint("secagg_unmask", "update", 1),))
    app = _coordinator(tmp_path / "c.sqlite", Clock(), faults)
    engine = app.submit(PLAN.format(rounds=1, attempts=3), "toml", "urn:op")
    sites = {n: FakeSite(n, np.random.default_rng(i)) for i, n in enumerate(NAMES)}
    with pytest.raises(Killed):
        _drive(app, sites)
    assert kills == [(os.getpid(), signal.SIGKILL)]
    progress = engine.progress()
    assert (progress.phase, progress.round) == (Phase.TRAIN, 1)
    unmask = app.find_task("site-0")
    assert unmask is not None and unmask[1].kind.value == "secagg_unmask"  # not taken


def test_the_offer_has_no_purpose(tmp_path: Path, kills: list[tuple[int, int]]) -> None:
    faults = Faults((CrashPoint("plan_offer", "-", 0),))
    app = _coordinator(tmp_path / "c.sqlite", Clock(), faults)
    engine = app.submit(PLAN.format(rounds=1, attempts=3), "toml", "urn:op")
    task = engine.task_for("site-0")
    assert task is not None
    with pytest.raises(Killed):
        app.take_result(engine, "site-0", SiteResult(task.task_id, task.kind), 0)
    assert len(kills) == 1
    app_default = Coordinator(app.store)
    assert app_default.faults == Faults()  # nothing injected unless server.main builds it
