"""Several runs at once on one coordinator: each has its own engine, state and store rows, and a
site, which answers one task at a time, is served by every run it takes part in.

The coordinator keeps one `RunEngine` per run (`Coordinator.engines`); `find_task` picks which of
a site's outstanding tasks it gets next. These tests drive two runs over the same three sites
step by step, as the site agents would (pull, answer, push), and check that neither run waits on
the other: not in lockstep, not while a person at one site has yet to approve the other run, and
not across a restart of the coordinator.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from coordinator.app import Coordinator
from coordinator.effects import Phase, RunStatus
from coordinator.engine import RunEngine
from coordinator.messages import PendingTask, SiteResult
from coordinator.store import CoordinatorStore
from federation.tasks import TaskKind
from tests.unit.coordinator.test_app import NAMES, Clock, _coordinator
from tests.unit.coordinator.test_engine import PLAN, FakeSite

pytestmark = pytest.mark.unit

Sites = dict[str, dict[str, FakeSite]]  # run id -> site name -> that site's side of the run
Served = list[tuple[str, str, frozenset[str]]]  # (site, run served, runs with a task for it)
Answer = Callable[[str, RunEngine, PendingTask], SiteResult | None]

ROUNDS = {"study-a": 2, "study-b": 1}
EPSILON_PER_ROUND = {"study-a": 0.25, "study-b": 0.5}  # what each run's sites report spending


def _plan(name: str) -> str:
    text = PLAN.format(rounds=ROUNDS[name], attempts=3)
    return text.replace('name = "engine"', f'name = "{name}"')


def _two_runs(app: Coordinator) -> tuple[RunEngine, RunEngine, Sites]:
    """Run A, then run B on the same sites (allowed to overlap), each with its own fake sites
    (own data, own secure-aggregation keys per session)."""
    first = app.submit(_plan("study-a"), "toml", "urn:op")
    second = app.submit(_plan("study-b"), "toml", "urn:op", allow_concurrent=True)
    sites = {
        engine.run_id: {
            n: FakeSite(n, np.random.default_rng(seed + i)) for i, n in enumerate(NAMES)
        }
        for engine, seed in ((first, 0), (second, 100))
    }
    return first, second, sites


def _sweep(app: Coordinator, sites: Sites, served: Served, answer: Answer | None = None) -> bool:
    """Each site pulls once and answers what it got (a site does one task at a time), as the
    agents' loops do; True if any site had a task. `answer` may stand in for a site's answer."""
    progressed = False
    for name in NAMES:
        waiting = frozenset(
            run_id for run_id, engine in app.engines.items() if engine.task_for(name) is not None
        )
        found = app.find_task(name)
        if found is None:
            continue
        engine, task = found
        served.append((name, engine.run_id, waiting))
        result = answer(name, engine, task) if answer is not None else None
        if result is None:
            result = sites[engine.run_id][name].answer(task, engine)
        if task.kind is TaskKind.TRAIN:  # the privacy report a site's training result carries
            spent = EPSILON_PER_ROUND[engine.plan.name] * task.round
            result = dataclasses.replace(result, epsilon_run=spent, epsilon_lifetime=spent)
        app.take_result(engine, name, result, len(result.payload))
        progressed = True
    app.tick()  # the clock stands still: this only drops the runs that are done
    return progressed


def _drive(
    app: Coordinator,
    sites: Sites,
    served: Served,
    until: Callable[[], bool] | None = None,
    answer: Answer | None = None,
) -> None:
    """Sweep until `until()` holds, or until no site has anything to do."""
    for _ in range(500):
        if until is not None and until():
            return
        if not _sweep(app, sites, served, answer):
            return


def _check_run(app: Coordinator, run_id: str, sites: dict[str, FakeSite]) -> None:
    """The run completed, every one of its sums is exactly its own sites' releases, its
    history has its own rounds, and its privacy figures are what its own sites reported."""
    engine = app.engine_or_stored(run_id)
    assert engine is not None
    progress = engine.progress()
    assert progress.status is RunStatus.COMPLETED, progress.message
    name = engine.plan.name
    stored = app.store.aggregates(run_id)
    assert sorted((p, r) for p, r, *_ in stored) == sorted(
        [("stats", 0)]
        + [("update", r) for r in range(1, ROUNDS[name] + 1)]
        + [("metrics", ROUNDS[name])]
    )
    for purpose, round_, _attempt, survivors, total in stored:
        assert sorted(survivors) == NAMES
        expected = np.zeros_like(total)
        for site in survivors:
            expected += sites[site].released[(purpose, round_)]
        np.testing.assert_array_equal(total, expected)
    history = [(r.purpose.value, r.round) for r in progress.history]
    assert sorted(history) == sorted((p, r) for p, r, *_ in stored)
    assert progress.global_round == ROUNDS[name]
    spent = EPSILON_PER_ROUND[name] * ROUNDS[name]
    assert {s: p["epsilon_run"] for s, p in progress.privacy.items()} == dict.fromkeys(NAMES, spent)


def _check_fair(served: Served) -> None:
    """A run with a task for a site is never passed over twice in a row for that site."""
    for name in NAMES:
        mine = [(run_id, waiting) for site, run_id, waiting in served if site == name]
        for (before, _), (after, waiting) in itertools.pairwise(mine):
            if len(waiting) > 1:
                assert after != before, f"{name}: {after} served twice while others waited"


def test_two_runs_on_the_same_sites_interleave_and_keep_their_own_state(tmp_path: Path) -> None:
    app = _coordinator(tmp_path / "c.sqlite", Clock())
    first, second, sites = _two_runs(app)
    served: Served = []
    _drive(app, sites, served)
    assert app.engines == {}  # both finished and were dropped
    _check_fair(served)
    for name in NAMES:  # step by step: the second run did not wait for the first to end
        runs = [run_id for site, run_id, _ in served if site == name]
        assert runs.index(second.run_id) < len(runs) - 1 - runs[::-1].index(first.run_id)
    for engine in (first, second):
        _check_run(app, engine.run_id, sites[engine.run_id])
    stats = {e.run_id: app.store.aggregates(e.run_id)[0][4] for e in (first, second)}
    assert not np.array_equal(stats[first.run_id], stats[second.run_id])  # different data
    assert app.store.audit.verify().ok


def test_a_site_awaiting_approval_of_one_run_still_serves_the_other(tmp_path: Path) -> None:
    """Site-2's policy holds run A's offer for a person (the offer stays outstanding and the
    site answers it again and again): run B must still reach site-2 and complete with it."""
    app = _coordinator(tmp_path / "c.sqlite", Clock())
    first, second, sites = _two_runs(app)
    approved = False

    def hold_first_offer(site: str, engine: RunEngine, task: PendingTask) -> SiteResult | None:
        holding = not approved and site == "site-2" and engine is first
        if holding and task.kind is TaskKind.PLAN_OFFER:
            return SiteResult(
                task.task_id, task.kind, error_code="approval_pending", error_message="held"
            )
        return None

    served: Served = []
    done = lambda: second.progress().phase is Phase.DONE  # noqa: E731
    _drive(app, sites, served, until=done, answer=hold_first_offer)
    assert second.progress().status is RunStatus.COMPLETED, second.progress().message
    assert first.progress().phase is Phase.OFFER  # still waiting for site-2's person
    assert first.progress().awaiting == {"site-2": "held"}
    approved = True
    _drive(app, sites, served, answer=hold_first_offer)
    _check_fair(served)
    for engine in (first, second):
        _check_run(app, engine.run_id, sites[engine.run_id])


def test_a_restart_mid_way_resumes_both_runs_from_the_store(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "c.sqlite"
    app = _coordinator(path, clock)
    first, second, sites = _two_runs(app)
    served: Served = []

    def mid_way() -> bool:  # both past their statistics, one inside a secure-aggregation session
        progress = [e.progress() for e in (first, second)]
        return all(p.phase is Phase.TRAIN for p in progress) and any(
            p.secagg_stage is not None for p in progress
        )

    _drive(app, sites, served, until=mid_way)
    assert mid_way()
    app.store.close()  # the process dies here

    again = Coordinator(CoordinatorStore(path, clock=clock), clock=clock)
    assert sorted(again.resume()) == sorted([first.run_id, second.run_id])
    assert all(e.progress().phase is Phase.TRAIN for e in again.engines.values())
    _drive(again, sites, served)
    assert again.engines == {}
    for engine in (first, second):
        _check_run(again, engine.run_id, sites[engine.run_id])
    retried = [a for e in (first, second) for a in again.store.aggregates(e.run_id) if a[2] > 0]
    assert retried  # the session cut by the restart was retried with a fresh attempt
    assert again.store.audit.verify().ok
