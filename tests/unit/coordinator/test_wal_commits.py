"""Durable commits sync the WAL before returning; lazy ones wait for `sync`; and a killed
process loses neither (coordinator/wal.py)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from coordinator.store import CoordinatorStore
from coordinator.wal import WalCommits

pytestmark = pytest.mark.unit


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every fsync of a WAL file (the real one still runs; the head file's are not counted)."""
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("-wal"):
            calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


def _commits(tmp_path: Path, rollbacks: list[int]) -> tuple[sqlite3.Connection, WalCommits]:
    path = tmp_path / "db.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    commits = WalCommits(conn, path, on_rollback=lambda: rollbacks.append(1))
    conn.execute("CREATE TABLE t (x INTEGER)")
    return conn, commits


def test_a_durable_commit_syncs_the_wal_and_a_lazy_one_waits_for_sync(
    tmp_path: Path, fsyncs: list[int]
) -> None:
    conn, commits = _commits(tmp_path, [])
    commits.sync()  # the CREATE TABLE
    fsyncs.clear()
    with commits.transaction(durable=False):
        conn.execute("INSERT INTO t VALUES (1)")
    assert fsyncs == []
    commits.sync()
    assert len(fsyncs) == 1
    commits.sync()  # nothing new: no second disk wait
    assert len(fsyncs) == 1
    with commits.transaction():
        conn.execute("INSERT INTO t VALUES (2)")
    assert len(fsyncs) == 2
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL: fsync is ours


def test_a_rollback_runs_the_callback_and_keeps_nothing(tmp_path: Path) -> None:
    rollbacks: list[int] = []
    conn, commits = _commits(tmp_path, rollbacks)
    with pytest.raises(RuntimeError), commits.transaction(durable=False):
        conn.execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("boom")
    assert rollbacks == [1]
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0


def test_a_lazy_commit_survives_a_killed_process(tmp_path: Path) -> None:
    """The child commits lazily and dies with SIGKILL before any sync: the row is there."""
    path = tmp_path / "db.sqlite"
    child = textwrap.dedent(
        f"""
        import os, signal, sqlite3
        from pathlib import Path
        from coordinator.wal import WalCommits
        conn = sqlite3.connect({str(path)!r}, isolation_level=None)
        commits = WalCommits(conn, Path({str(path)!r}), on_rollback=lambda: None)
        conn.execute("CREATE TABLE t (x INTEGER)")
        with commits.transaction(durable=False):
            conn.execute("INSERT INTO t VALUES (42)")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", child], check=False)
    assert done.returncode == -9
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT x FROM t").fetchall() == [(42,)]


def test_a_session_result_is_recorded_without_a_disk_wait_and_synced_at_the_tick(
    tmp_path: Path, fsyncs: list[int]
) -> None:
    store = CoordinatorStore(tmp_path / "coordinator.sqlite", clock=lambda: 1000.0)
    store.record_hello("site-a", "PEM", "1.0", {})
    fsyncs.clear()
    store.record(audit=[("site:site-a", "result", {"run_id": "r", "kind": "secagg"})])
    assert fsyncs == []
    store.flush()  # the tick: synced before the head file names the entry
    assert len(fsyncs) == 1
    store.save_run({"run_id": "r", "status": "running", "phase": "train"}, {})
    assert len(fsyncs) == 2  # what a restart reads waits for the disk
    store.close()


def test_an_unchanged_lifetime_epsilon_is_not_rewritten(tmp_path: Path) -> None:
    store = CoordinatorStore(tmp_path / "coordinator.sqlite", clock=lambda: 1000.0)
    store.record_hello("site-a", "PEM", "1.0", {"lifetime_epsilon_spent": 0.0})
    store.record(lifetime_epsilon={"site-a": 1.5})
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    store.record(lifetime_epsilon={"site-a": 1.5})
    store._conn.set_trace_callback(None)
    assert not any("UPDATE sites" in s for s in statements)
    store.record(lifetime_epsilon={"site-a": 2.0})
    assert store.sites()[0].policy["lifetime_epsilon_spent"] == 2.0
    store.record_hello("site-a", "PEM", "1.0", {"lifetime_epsilon_spent": 0.0})  # a reconnect
    store.record(lifetime_epsilon={"site-a": 2.0})
    assert store.sites()[0].policy["lifetime_epsilon_spent"] == 2.0
    store.close()


def test_the_sites_view_is_read_once_per_change_and_callers_cannot_edit_it(
    tmp_path: Path,
) -> None:
    store = CoordinatorStore(tmp_path / "coordinator.sqlite", clock=lambda: 1000.0)
    store.record_hello("site-a", "PEM", "1.0", {"max_delta": 1e-5})
    store.sites()
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    first = store.sites()
    assert not any("FROM sites" in s for s in statements)  # no re-read without a change
    first[0].policy["max_delta"] = 1.0  # a caller's copy
    assert store.sites()[0].policy == {"max_delta": 1e-5}
    store._conn.set_trace_callback(None)
    store.record(lifetime_epsilon={"site-a": 0.5})
    assert store.sites()[0].policy["lifetime_epsilon_spent"] == 0.5
    store.close()


def test_only_what_no_site_can_give_again_waits_for_the_disk(
    tmp_path: Path, fsyncs: list[int]
) -> None:
    """Driving a whole run through the application: a result that decodes a sum (and moves the
    model), the submission and the run's end are synced before the answer; an offer's answer,
    an acknowledgement or a session answer is not (synced at the tick), since a restart asks
    the site again (docs/operations.md, "When things go wrong")."""
    import numpy as np

    from coordinator.effects import Phase
    from tests.unit.coordinator.test_app import NAMES, Clock, _coordinator
    from tests.unit.coordinator.test_engine import PLAN, FakeSite

    app = _coordinator(tmp_path / "c.sqlite", Clock())
    fsyncs.clear()
    engine = app.submit(PLAN.format(rounds=1, attempts=3), "toml", "urn:op")
    assert len(fsyncs) == 1  # the submission
    sites = {n: FakeSite(n, np.random.default_rng(i)) for i, n in enumerate(NAMES)}
    synced: dict[bool, int] = {True: 0, False: 0}  # aggregated? -> results that synced
    results: dict[bool, int] = {True: 0, False: 0}
    for _ in range(500):
        if engine.progress().phase in (Phase.FINISHING, Phase.DONE):
            break
        for name in NAMES:
            found = app.find_task(name)
            if found is None:
                continue
            run, task = found
            before, sums = len(fsyncs), len(app.store.aggregates(run.run_id))
            app.take_result(run, name, sites[name].answer(task, run), 0)
            aggregated = len(app.store.aggregates(run.run_id)) > sums
            results[aggregated] += 1
            synced[aggregated] += len(fsyncs) > before
    assert results[True] == 3  # statistics, update, metrics
    assert synced[True] == 3  # each decoded sum waited for the disk
    assert results[False] > 40 and synced[False] == 0  # no other result did
