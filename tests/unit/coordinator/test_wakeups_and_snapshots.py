"""What the coordinator writes and wakes per result: a secure-aggregation session's tasks are
never stored (a restart discards them), and a long-poll wakes only for its own site's task."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from coordinator import snapshot
from coordinator.app import Coordinator
from coordinator.effects import Phase, RunStatus
from coordinator.store import CoordinatorStore
from tests.unit.coordinator.test_app import NAMES, Clock, _coordinator, _drive
from tests.unit.coordinator.test_engine import PLAN, FakeSite

pytestmark = pytest.mark.unit


def _in_update_session(tmp_path: Path) -> tuple[Coordinator, Clock, dict[str, FakeSite]]:
    clock = Clock()
    app = _coordinator(tmp_path / "c.sqlite", clock)
    app.submit(PLAN.format(rounds=1, attempts=3), "toml", "urn:op")
    sites = {n: FakeSite(n, np.random.default_rng(i)) for i, n in enumerate(NAMES)}
    _drive(app, sites, until=Phase.TRAIN)
    for name in NAMES:  # train, so that the update session opens
        found = app.find_task(name)
        assert found is not None
        app.take_result(found[0], name, sites[name].answer(found[1], found[0]), 0)
    return app, clock, sites


def test_a_session_in_flight_is_stored_without_its_tasks(tmp_path: Path) -> None:
    app, _, sites = _in_update_session(tmp_path)
    engine = next(iter(app.engines.values()))
    assert engine.progress().secagg_stage is not None and engine.tasks
    # every result of the session: the stored state carries no session message
    for _ in range(2):
        for name in NAMES:
            found = app.find_task(name)
            if found is not None and found[1].secagg_message:
                app.take_result(found[0], name, sites[name].answer(found[1], found[0]), 0)
                row = app.store.run(engine.run_id)
                assert row is not None and row.state["tasks"] == []
                assert "secagg_message" not in json.dumps(row.state)


def test_tasks_outside_a_session_are_stored(tmp_path: Path) -> None:
    clock = Clock()
    app = _coordinator(tmp_path / "c.sqlite", clock)
    engine = app.submit(PLAN.format(rounds=1, attempts=3), "toml", "urn:op")
    state, _ = snapshot.dump(engine)  # the plan offer: a restart must send it again
    assert {t["site"] for t in state["tasks"]} == set(NAMES)
    loaded = snapshot.load(state, {})
    assert sorted(loaded.tasks) == sorted(NAMES)


def test_a_run_stored_mid_session_resumes_and_completes(tmp_path: Path) -> None:
    app, clock, sites = _in_update_session(tmp_path)
    engine = next(iter(app.engines.values()))
    found = app.find_task(NAMES[0])
    assert found is not None  # one more stage result, then the process dies
    app.take_result(found[0], NAMES[0], sites[NAMES[0]].answer(found[1], found[0]), 0)
    app.store.close()
    again = Coordinator(CoordinatorStore(tmp_path / "c.sqlite", clock=clock), clock=clock)
    assert again.resume() == [engine.run_id]
    _drive(again, sites)
    assert again.engines[engine.run_id].progress().status is RunStatus.COMPLETED


def test_a_long_poll_wakes_only_for_its_own_site(tmp_path: Path) -> None:
    app = _coordinator(tmp_path / "c.sqlite", Clock())

    async def scenario() -> tuple[bool, bool, bool]:
        waiting = {n: asyncio.create_task(app.wait_for_task(n, 5.0)) for n in NAMES[:2]}
        watcher = asyncio.create_task(app.wait_for_change(5.0))
        await asyncio.sleep(0)  # all three parked
        app.notify([NAMES[0]])
        await asyncio.sleep(0.05)
        woke = waiting[NAMES[0]].done(), waiting[NAMES[1]].done(), watcher.done()
        app.notify()  # everyone
        await asyncio.wait_for(asyncio.gather(*waiting.values(), watcher), 1.0)
        return woke

    assert asyncio.run(scenario()) == (True, False, True)


def test_a_result_wakes_the_sites_whose_task_changed_and_no_other(tmp_path: Path) -> None:
    app, _, sites = _in_update_session(tmp_path)
    woken: list[list[str] | None] = []
    notify = app.notify

    def record(targets: object = None) -> None:
        woken.append(None if targets is None else sorted(targets))  # type: ignore[call-overload]
        notify(targets)  # type: ignore[arg-type]

    app.notify = record  # type: ignore[method-assign]
    for name in NAMES:
        found = app.find_task(name)
        assert found is not None
        app.take_result(found[0], name, sites[name].answer(found[1], found[0]), 0)
    # the first two answers withdraw only the answering site's task: nobody else is woken;
    # the last one completes the stage and gives every site its next task
    assert woken == [[NAMES[0]], [NAMES[1]], sorted(NAMES)]


def test_a_result_inside_a_session_writes_its_audit_entry_but_not_the_run_row(
    tmp_path: Path,
) -> None:
    app, _, sites = _in_update_session(tmp_path)
    engine = next(iter(app.engines.values()))
    before = app.store.run(engine.run_id)
    entries = len(app.store.audit.entries(after=0, limit=100_000))
    found = app.find_task(NAMES[0])
    assert found is not None and found[1].kind.is_secagg
    app.take_result(found[0], NAMES[0], sites[NAMES[0]].answer(found[1], found[0]), 0)
    after = app.store.run(engine.run_id)
    assert before is not None and after is not None
    assert after.state == before.state  # the row was not rewritten for one answer
    assert engine.answered[NAMES[0]] == found[1].task_id  # though the engine knows it
    logged = app.store.audit.entries(after=0, limit=100_000)
    assert len(logged) == entries + 1 and logged[-1].action == "result"
    assert logged[-1].detail["purpose"] == "update"
