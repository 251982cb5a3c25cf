"""`RunEngine.answer_only` and `restart_state_moved` let the application skip computing whether
a result changed what a restart reads; so whenever the engine says "unchanged" that must really
be unchanged (`snapshot.restart_key`), and whenever it says "moved" it must really have moved,
whatever sites drop out and whatever privacy figures they report; and the hints must cover the
bulk of a session's answers and of a local step's acknowledgements (or they save nothing)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator import snapshot
from coordinator.effects import Effect, StepPart
from coordinator.engine import RunEngine
from coordinator.messages import PendingTask, SiteResult
from federation.tasks import TaskKind
from tests.unit.coordinator.test_engine import _run

pytestmark = pytest.mark.unit

SECAGG_KINDS = [k for k in TaskKind if k.is_secagg]


def _drive(
    n_sites: int, dropped: dict[str, tuple[TaskKind, int]], epsilon_every: int
) -> tuple[int, int]:
    """Run to the end; check the invariant after every result. Returns (session answers,
    answer-only ones). A site in `dropped` goes silent at that (kind, round); every
    `epsilon_every`-th session answer reports a new ε (0: never)."""
    drop: dict[tuple[TaskKind, int], set[str]] = {}
    for site, at in dropped.items():
        drop.setdefault(at, set()).add(site)
    counts = {"answers": 0, "quiet": 0, "local": 0, "moved": 0}

    def answer(engine: RunEngine, site: str, task: PendingTask, result: SiteResult) -> list[Effect]:
        if task.kind.is_secagg:
            counts["answers"] += 1
            if epsilon_every and counts["answers"] % epsilon_every == 0:
                result = dataclasses.replace(result, epsilon_run=counts["answers"] / 100.0)
        before = snapshot.restart_key(engine)
        effects = engine.on_result(site, result, 1000.0)
        if engine.answer_only:
            counts["quiet"] += 1
            assert engine.step is StepPart.SECAGG
            assert snapshot.restart_key(engine) == before, (site, task.kind)
        assert (engine.restart_state_moved is False) == engine.answer_only
        if engine.restart_state_moved:
            counts["moved"] += 1
            assert snapshot.restart_key(engine) != before, (site, task.kind)
        if not task.kind.is_secagg and effects:
            counts["local"] += 1
        return effects

    _run(n_sites, rounds=2, drop=drop, answer=answer)
    assert counts["moved"] >= counts["local"] > 0  # every local result taken is known moved
    return counts["answers"], counts["quiet"]


def test_most_answers_of_a_session_are_answer_only() -> None:
    answers, quiet = _drive(6, {}, epsilon_every=0)
    # every stage but its last answer (which advances the stage) is answer-only
    assert answers > 0 and quiet >= answers * 4 // 6


def test_an_answer_reporting_a_new_epsilon_is_not_answer_only() -> None:
    plain = _drive(5, {}, epsilon_every=0)[1]
    reporting = _drive(5, {}, epsilon_every=1)[1]
    assert reporting == 0 < plain


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_sites=st.integers(3, 6),
    data=st.data(),
    epsilon_every=st.sampled_from([0, 2, 7]),
)
def test_an_answer_only_result_never_changes_what_a_restart_reads(
    n_sites: int, data: st.DataObject, epsilon_every: int
) -> None:
    names = [f"site-{i}" for i in range(n_sites)]
    dropping = data.draw(st.lists(st.sampled_from(names), unique=True, max_size=n_sites - 1))
    dropped = {
        site: (data.draw(st.sampled_from(SECAGG_KINDS)), data.draw(st.integers(0, 2)))
        for site in dropping
    }
    _drive(n_sites, dropped, epsilon_every)
