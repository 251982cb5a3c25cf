"""A run's snapshot cut into head, per-site parts and history comes back exactly — every list and
mapping in its original order — and saving a result writes what it changed: the head and one
site's part, however many sites the run has (issue 17: store bytes per result O(1))."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import state_parts
from coordinator.store import CoordinatorStore
from federation.audit_head import AuditError
from tests.unit.coordinator.test_store import Clock

pytestmark = pytest.mark.unit

SITES = st.sampled_from([f"site-{i:02d}" for i in range(12)])
VALUES = st.one_of(
    st.integers(),
    st.text(max_size=5),
    st.dictionaries(st.text(max_size=3), st.floats(allow_nan=False), max_size=2),
)


def _ordered(value: Any) -> Any:
    """A JSON value with every mapping as its list of items: equality that sees order."""
    if isinstance(value, dict):
        return [(k, _ordered(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_ordered(v) for v in value]
    return value


@st.composite
def states(draw: st.DrawFn) -> dict[str, Any]:
    """Snapshot-shaped documents, including the shapes `split` must leave whole (a list naming
    a site twice, tasks without a site)."""
    state: dict[str, Any] = {
        "run_id": "run-1",
        "status": "running",
        "round": draw(st.integers(0, 5)),
        "plan": {"sites": draw(st.lists(SITES, max_size=4))},
    }
    for field in state_parts.SITE_LISTS:
        if draw(st.booleans()):
            state[field] = draw(st.lists(SITES, max_size=8))  # duplicates now and then
    for field in state_parts.SITE_MAPS:
        if draw(st.booleans()):
            state[field] = draw(st.dictionaries(SITES, VALUES, max_size=6))
    if draw(st.booleans()):
        sites = draw(st.lists(st.one_of(SITES, st.none()), max_size=5))
        state["tasks"] = [{"site": s, "kind": "train"} if s else {"kind": "x"} for s in sites]
    if draw(st.booleans()):
        named = draw(st.lists(SITES, max_size=5))
        state["session_sites"] = {str(i + 1): s for i, s in enumerate(named)}
    state["history"] = draw(st.lists(st.dictionaries(st.text(max_size=3), VALUES), max_size=3))
    return state


@settings(max_examples=300, deadline=None)
@given(states())
def test_join_of_split_is_the_state_in_its_order(state: dict[str, Any]) -> None:
    cut = state_parts.split(state)
    # through JSON, as the store keeps them
    head = json.loads(json.dumps(cut.head))
    parts = {name: json.loads(json.dumps(part)) for name, part in cut.parts.items()}
    history = json.loads(json.dumps(cut.history))
    joined = state_parts.join(head, parts, history)
    # the document's own keys may come back in another order; every value in its own
    assert {k: _ordered(v) for k, v in joined.items()} == {k: _ordered(v) for k, v in state.items()}


@settings(max_examples=200, deadline=None)
@given(states(), states())
def test_a_split_keeping_earlier_positions_still_joins_to_the_state(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    earlier = state_parts.split(first).parts
    cut = state_parts.split(second, previous=earlier)
    joined = state_parts.join(cut.head, cut.parts, cut.history)
    assert {k: _ordered(v) for k, v in joined.items()} == {
        k: _ordered(v) for k, v in second.items()
    }


@settings(max_examples=60, deadline=None)
@given(st.lists(states(), min_size=1, max_size=5))
def test_a_store_saving_state_after_state_reads_back_the_last(
    tmp_path_factory: pytest.TempPathFactory, sequence: list[dict[str, Any]]
) -> None:
    path = tmp_path_factory.mktemp("seq") / "c.sqlite"
    store = CoordinatorStore(path, clock=Clock())
    history: list[Any] = []
    for state in sequence:  # the engine's history only grows, by frozen records
        history = history + state["history"]
        state["history"] = history
    for state in sequence:  # what changed is written, what went is deleted, the rest kept
        store.save_run(json.loads(json.dumps(state)), {})  # a fresh document, as dump makes
        row = store.run("run-1")
        assert row is not None and row.state == state
    store.close()
    again = CoordinatorStore(path, clock=Clock())  # and from the file alone
    assert again.run("run-1").state == sequence[-1]  # type: ignore[union-attr]
    again.close()


def test_a_list_naming_a_site_twice_stays_whole_in_the_head() -> None:
    cut = state_parts.split({"status": "x", "acked": ["a", "a"], "accepted": ["a", "b"]})
    assert cut.head["acked"] == ["a", "a"] and "accepted" not in cut.head
    assert cut.parts == {"site:a": {"accepted": 0}, "site:b": {"accepted": 1}}


def _run_state(n: int, acked: int, round_: int = 1) -> dict[str, Any]:
    """A snapshot of a run of n sites, `acked` of which acknowledged their TRAIN task."""
    sites = [f"site-{i:03d}" for i in range(n)]
    return {
        "run_id": "run-1",
        "plan": {"sites": sites, "rounds": 3},
        "status": "running",
        "round": round_,
        "candidates": sites,
        "accepted": sites,
        "acked": sites[:acked],
        "refusals": {},
        "awaiting": {},
        "answered": {s: f"task-{s}" for s in sites[:acked]},
        "privacy": {s: {"epsilon": 0.5 * round_} for s in sites},
        "published": {},
        "session_sites": {},
        "tasks": [{"site": s, "kind": "train", "task_id": f"t-{s}"} for s in sites[acked:]],
        "history": [{"round": r, "participants": sites} for r in range(round_)],
    }


def _rows_changed_by_one_result(tmp_path: Path, n: int) -> int:
    store = CoordinatorStore(tmp_path / f"n{n}.sqlite", clock=Clock())
    store.save_run(_run_state(n, acked=3), {})
    before = store._conn.total_changes
    store.save_run(_run_state(n, acked=4), {})  # one more site acknowledged
    changed = store._conn.total_changes - before
    store.close()
    return changed


def test_a_result_writes_the_same_rows_at_ten_sites_as_at_two_hundred(tmp_path: Path) -> None:
    small, large = (_rows_changed_by_one_result(tmp_path, n) for n in (10, 200))
    assert small == large
    assert small <= 3  # the head and the one site's part (plus nothing of the history)


def test_a_reopened_store_returns_the_whole_state_and_drops_parts_that_went(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.sqlite"
    store = CoordinatorStore(path, clock=Clock())
    store.save_run(_run_state(6, acked=2), {})
    store.close()
    again = CoordinatorStore(path, clock=Clock())
    row = again.run("run-1")
    assert row is not None and row.state == _run_state(6, acked=2)
    later = _run_state(6, acked=6, round_=2)  # no tasks left: the sites' task entries went
    later["candidates"] = later["accepted"] = later["acked"] = ["site-000"]
    later["privacy"] = {"site-000": {"epsilon": 1.0}}
    later["answered"] = {"site-000": "t"}
    again.save_run(later, {})
    assert again.runs()[0].state == later
    names = [r[0] for r in again._conn.execute("SELECT name FROM run_parts ORDER BY name")]
    assert names == ["plan", "site:site-000"]
    assert again._conn.execute("SELECT COUNT(*) FROM run_history").fetchone() == (2,)
    again.close()


def test_a_run_stored_whole_by_an_older_coordinator_is_read_and_then_cut(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    CoordinatorStore(path, clock=Clock()).close()
    old = _run_state(4, acked=1)
    with sqlite3.connect(path) as conn:  # the row an older store wrote: the whole document
        conn.execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?)",
            ("run-1", 1.0, 1.0, "running", "ana", json.dumps(old)),
        )
    store = CoordinatorStore(path, clock=Clock())
    (row,) = store.runs()
    assert row.state == old and row.submitted_by == "ana"
    store.save_run(_run_state(4, acked=2), {})
    (head,) = store._conn.execute("SELECT state_json FROM runs").fetchone()
    assert state_parts.is_split(json.loads(head)) and "plan" not in json.loads(head)
    assert store.run("run-1").state == _run_state(4, acked=2)  # type: ignore[union-attr]
    store.close()


def test_a_failed_save_is_rewritten_whole_by_the_next(tmp_path: Path) -> None:
    store = CoordinatorStore(tmp_path / "c.sqlite", clock=Clock())
    store.save_run(_run_state(5, acked=1), {})
    with pytest.raises(AuditError):  # the audit log refuses a non-finite detail: all rolls back
        store.save_run(_run_state(5, acked=3), {}, audit=[("x", "bad", {"v": float("nan")})])
    assert store.run("run-1").state == _run_state(5, acked=1)  # type: ignore[union-attr]
    store.save_run(_run_state(5, acked=2), {})
    assert store.run("run-1").state == _run_state(5, acked=2)  # type: ignore[union-attr]
    store.close()
