"""The coordinator store on a real SQLite file: runs, vectors, aggregates and audit survive a
reopen, a save is atomic with its audit entries, and "unchanged" means unchanged bytes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from coordinator.store import CoordinatorStore
from federation.audit_head import AuditError

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _state(run_id: str = "run-1", status: str = "running", **extra: object) -> dict[str, object]:
    return {"run_id": run_id, "status": status, "phase": "train", **extra}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "coordinator.sqlite"


def test_runs_vectors_aggregates_and_audit_survive_a_reopen(path: Path) -> None:
    store = CoordinatorStore(path, clock=Clock())
    vector = np.arange(5, dtype=np.float32)
    total = np.array([1, 2**32 - 1, 7], dtype=np.uint32)
    store.save_run(
        _state(round=1),
        {"global_vector": vector, "adam_m": np.ones(5, dtype=np.float32)},
        submitted_by="urn:concordia:operator:ana:admin",
        global_round=1,
        audit=[("coordinator", "aggregated", {"run_id": "run-1", "round": 1})],
        aggregates=[("update", 1, 0, ["site-a", "site-b"], total)],
    )
    store.close()

    again = CoordinatorStore(path, clock=Clock())
    try:
        (row,) = again.runs()
        assert (row.run_id, row.status, row.state["round"]) == ("run-1", "running", 1)
        assert row.submitted_by == "urn:concordia:operator:ana:admin"
        assert again.run("run-1") == row and again.run("nope") is None
        vectors = again.run_vectors("run-1")
        np.testing.assert_array_equal(vectors["global_vector"], vector)
        np.testing.assert_array_equal(vectors["adam_m"], np.ones(5))
        round_, exported = again.round_vector("run-1")
        assert round_ == 1
        np.testing.assert_array_equal(exported, vector)
        ((purpose, r, attempt, survivors, stored_total),) = again.aggregates("run-1")
        assert (purpose, r, attempt, survivors) == ("update", 1, 0, ["site-a", "site-b"])
        assert stored_total.dtype == np.uint32
        np.testing.assert_array_equal(stored_total, total)
        assert [e.action for e in again.audit.entries(after=0, limit=10)] == ["aggregated"]
        assert again.audit.verify().ok
    finally:
        again.close()


def test_a_vector_updated_in_place_is_saved(path: Path) -> None:
    """The same array object with new contents must reach the disk (identity is not content)."""
    store = CoordinatorStore(path, clock=Clock())
    vector = np.zeros(4, dtype=np.float32)
    store.save_run(_state(), {"global_vector": vector}, global_round=1)
    vector += 1.5  # in place: id(vector) is unchanged
    store.save_run(_state(), {"global_vector": vector}, global_round=1)
    np.testing.assert_array_equal(store.run_vectors("run-1")["global_vector"], np.full(4, 1.5))
    np.testing.assert_array_equal(store.round_vector("run-1", 1)[1], np.full(4, 1.5))
    store.close()


def test_an_unchanged_vector_is_not_rewritten(path: Path) -> None:
    store = CoordinatorStore(path, clock=Clock())
    store.save_run(_state(), {"global_vector": np.ones(3, dtype=np.float32)}, global_round=1)
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    store.save_run(_state(), {"global_vector": np.ones(3, dtype=np.float32)}, global_round=1)
    store._conn.set_trace_callback(None)
    assert not any("run_vectors" in s or "round_vectors" in s for s in statements)
    store.close()


def test_every_round_keeps_its_global_vector_even_when_it_did_not_move(path: Path) -> None:
    store = CoordinatorStore(path, clock=Clock())
    same = np.ones(3, dtype=np.float32)
    for round_ in (0, 1, 2):
        store.save_run(_state(), {"global_vector": same}, global_round=round_)
    assert [store.round_vector("run-1", r)[0] for r in (0, 1, 2)] == [0, 1, 2]
    assert store.round_vector("run-1")[0] == 2
    assert store.round_vector("run-1", 7) is None
    store.close()


def test_a_failed_save_leaves_nothing_and_the_next_save_writes_the_vector(path: Path) -> None:
    store = CoordinatorStore(path, clock=Clock())
    vector = np.full(3, 2.0, dtype=np.float32)
    with pytest.raises(AuditError):  # the audit log refuses a non-finite detail
        store.save_run(
            _state(),
            {"global_vector": vector},
            global_round=1,
            audit=[("coordinator", "bad", {"x": float("nan")})],
        )
    assert store.runs() == [] and store.run_vectors("run-1") == {}
    assert store.audit.entries(after=0, limit=10) == []
    store.save_run(_state(), {"global_vector": vector}, global_round=1)
    np.testing.assert_array_equal(store.run_vectors("run-1")["global_vector"], vector)
    store.close()


def test_a_second_save_updates_the_run_but_keeps_who_submitted_it(path: Path) -> None:
    store = CoordinatorStore(path, clock=Clock())
    store.save_run(_state(), {}, submitted_by="urn:concordia:operator:ana:admin")
    first = store.run("run-1")
    store.save_run(_state(status="completed"), {}, submitted_by="")
    second = store.run("run-1")
    assert first is not None and second is not None
    assert second.status == "completed" and second.submitted_by == first.submitted_by
    assert second.submitted == first.submitted and second.updated > first.updated
    store.close()


def test_runs_come_newest_first_and_limit_counts(path: Path) -> None:
    store = CoordinatorStore(path, clock=Clock())
    for run_id in ("run-a", "run-b", "run-c"):
        store.save_run(_state(run_id), {})
    assert [r.run_id for r in store.runs()] == ["run-c", "run-b", "run-a"]
    assert [r.run_id for r in store.runs(limit=2)] == ["run-c", "run-b"]
    store.close()


def test_sites_hello_and_touch(path: Path) -> None:
    clock = Clock()
    store = CoordinatorStore(path, clock=clock)
    store.record_hello("site-a", "PEM-A", "1.0", {"max_delta": 1e-5})
    first = store.sites()[0]
    store.touch_site("site-a")
    store.record_hello("site-a", "PEM-A2", "1.1", {})
    (row,) = store.sites()
    assert row.certificate_pem == "PEM-A2" and row.agent_version == "1.1" and row.policy == {}
    assert row.first_seen == first.first_seen and row.last_seen > first.last_seen
    assert store.certificate("site-a") == "PEM-A2" and store.certificate("site-z") is None
    assert [e.action for e in store.audit.entries(after=0, limit=10)] == ["hello", "hello"]
    store.close()


def test_the_store_file_is_private(path: Path) -> None:
    CoordinatorStore(path, clock=Clock()).close()
    assert path.stat().st_mode & 0o077 == 0
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"sites", "runs", "run_vectors", "aggregates", "round_vectors"} <= tables


def test_liveness_is_kept_in_memory_and_written_once_per_flush(path: Path) -> None:
    clock = Clock()
    store = CoordinatorStore(path, clock=clock)
    store.record_hello("site-a", "PEM-A", "1.0", {})
    hello_seen = store.sites()[0].last_seen
    clock.now += 5
    store.touch_site("site-a")
    clock.now += 5
    store.touch_site("site-a")  # the latest wins
    assert store.sites()[0].last_seen == clock.now  # fresh for ListSites and candidates
    with sqlite3.connect(path) as raw:  # but not one commit per RPC
        assert raw.execute("SELECT last_seen FROM sites").fetchone()[0] == hello_seen
    store.flush_seen()
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT last_seen FROM sites").fetchone()[0] == clock.now
    store.touch_site("site-a")
    store.close()  # a clean shutdown flushes too
    assert CoordinatorStore(path, clock=clock).sites()[0].last_seen == clock.now


def test_the_audit_head_file_is_written_per_flush_not_per_commit(path: Path) -> None:
    from federation.audit_head import head_file_path, read_head_file

    store = CoordinatorStore(path, clock=Clock())
    store.record_hello("site-a", "PEM-A", "1.0", {})
    store.flush()
    written = read_head_file(head_file_path(path))
    store.record_hello("site-b", "PEM-B", "1.0", {})  # a commit with an audit entry
    assert read_head_file(head_file_path(path)) == written  # the file waits for the tick
    store.flush()
    seq, digest = store.audit.head()
    after = read_head_file(head_file_path(path))
    assert (after.seq, after.hash) == (seq, digest) and seq == written.seq + 1
    store.record_hello("site-c", "PEM-C", "1.0", {})
    store.close()  # and shutdown writes it
    assert read_head_file(head_file_path(path)).seq == seq + 1


def test_the_cached_site_rows_follow_liveness_and_lifetime_epsilon_and_match_a_reopen(
    path: Path,
) -> None:
    """`sites()` keeps its parsed rows across liveness flushes and ε reports (it re-reads only
    on a Hello), so what it shows must move with them exactly as the file does."""
    clock = Clock()
    store = CoordinatorStore(path, clock=clock)
    store.record_hello("site-a", "PEM a", "1.0", {"lifetime_epsilon_spent": 0.0, "max_delta": 1e-5})
    store.record_hello("site-b", "PEM b", "1.0", {"lifetime_epsilon_spent": 0.5})
    before = {row.site_id: row for row in store.sites()}  # the cache is loaded here

    store.touch_site("site-a")
    store.flush()
    store.record(lifetime_epsilon={"site-b": 1.25})
    store.touch_site("site-b")  # noted, not yet flushed
    now = {row.site_id: row for row in store.sites()}
    assert now["site-a"].last_seen > before["site-a"].last_seen
    assert now["site-b"].last_seen > now["site-a"].last_seen
    assert now["site-b"].policy["lifetime_epsilon_spent"] == 1.25
    assert now["site-a"].policy == {"lifetime_epsilon_spent": 0.0, "max_delta": 1e-5}
    now["site-b"].policy["lifetime_epsilon_spent"] = 99.0  # a caller's copy, not the cache
    assert store.sites()[1].policy["lifetime_epsilon_spent"] == 1.25
    store.close()  # flushes site-b's liveness

    again = CoordinatorStore(path, clock=Clock())
    try:
        reread = {row.site_id: row for row in again.sites()}
        assert {k: (r.policy, r.last_seen) for k, r in reread.items()} == {
            k: (r.policy, r.last_seen) for k, r in now.items() if k == "site-a"
        } | {"site-b": ({"lifetime_epsilon_spent": 1.25}, now["site-b"].last_seen)}
    finally:
        again.close()
