"""Hash-chained audit log: appends chain, and every kind of tampering is detected."""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedctl.cli import run as fedctl
from federation.audit import GENESIS_HASH, AuditError, AuditLog, entry_hash

pytestmark = pytest.mark.unit


def _clock() -> Iterator[float]:
    return itertools.count(1_700_000_000.0, 1.5)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A database with five entries, closed again so tests can tamper with it directly."""
    path = tmp_path / "audit.db"
    ticks = _clock()
    with AuditLog(path, clock=lambda: next(ticks)) as log:
        for i in range(5):
            log.append("urn:concordia:site:a1", f"action-{i}", {"i": i, "note": "ünïcode"})
    return path


def _tamper(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    with conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()


def _verify(path: Path) -> tuple[bool, str | None]:
    with AuditLog(path, clock=lambda: 0.0) as log:
        result = log.verify()
    return result.ok, result.problem


def test_append_chains_entries_with_injected_clock(tmp_path: Path) -> None:
    ticks = _clock()
    with AuditLog(tmp_path / "a.db", clock=lambda: next(ticks)) as log:
        first = log.append("coordinator", "run.submitted", {"run": "r1"})
        second = log.append("coordinator", "run.started", {"run": "r1", "sites": ["a", "b"]})
        assert (first.seq, first.ts, first.prev_hash) == (1, 1_700_000_000.0, GENESIS_HASH)
        assert second.prev_hash == first.hash
        assert second.hash == entry_hash(
            2,
            1_700_000_001.5,
            "coordinator",
            "run.started",
            {"sites": ["a", "b"], "run": "r1"},
            first.hash,
        )
        assert log.head() == (2, second.hash)
        assert [e.action for e in log.entries()] == ["run.submitted", "run.started"]
        assert [e.seq for e in log.entries(after=1, limit=5)] == [2]
        result = log.verify()
    assert (result.ok, result.checked, result.head_hash, result.problem) == (
        True,
        2,
        second.hash,
        None,
    )


def test_untampered_log_verifies(db: Path) -> None:
    assert _verify(db) == (True, None)


def test_edited_entry_is_detected(db: Path) -> None:
    _tamper(db, """UPDATE audit_log SET detail = '{"i":99,"note":"x"}' WHERE seq = 3""")
    ok, problem = _verify(db)
    assert not ok and problem is not None and "seq 3 was edited" in problem


def test_edited_actor_is_detected(db: Path) -> None:
    _tamper(db, "UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2")
    ok, problem = _verify(db)
    assert not ok and problem is not None and "seq 2" in problem


def test_deleted_middle_entry_is_detected(db: Path) -> None:
    _tamper(db, "DELETE FROM audit_log WHERE seq = 3")
    ok, problem = _verify(db)
    assert not ok and problem is not None and "seq 3 is missing" in problem


def test_deleted_middle_entry_with_renumbering_is_detected(db: Path) -> None:
    _tamper(
        db,
        "DELETE FROM audit_log WHERE seq = 3",
        "UPDATE audit_log SET seq = seq - 1 WHERE seq > 3",
        "UPDATE audit_head SET seq = 4",
    )
    ok, problem = _verify(db)
    assert not ok and problem is not None and "seq 3" in problem


def test_reordered_entries_are_detected(db: Path) -> None:
    # Swap the contents of seq 2 and 4 (keeping each row's own hash fields).
    _tamper(
        db,
        "UPDATE audit_log SET seq = -2 WHERE seq = 2",
        "UPDATE audit_log SET seq = 2 WHERE seq = 4",
        "UPDATE audit_log SET seq = 4 WHERE seq = -2",
    )
    ok, problem = _verify(db)
    assert not ok and problem is not None and "seq 2" in problem


def test_truncated_tail_is_detected(db: Path) -> None:
    _tamper(db, "DELETE FROM audit_log WHERE seq >= 4")
    ok, problem = _verify(db)
    assert not ok and problem is not None and "truncated" in problem


def test_rewritten_head_without_external_record_is_consistent(db: Path) -> None:
    """The documented limit: a full rewrite verifies; only an external head hash reveals it."""
    with AuditLog(db, clock=lambda: 0.0) as log:
        recorded_elsewhere = log.verify().head_hash
        third = log.entries(after=2, limit=1)[0]
    _tamper(
        db,
        "DELETE FROM audit_log WHERE seq > 3",
        f"UPDATE audit_head SET seq = 3, hash = '{third.hash}'",
    )
    with AuditLog(db, clock=lambda: 0.0) as log:
        result = log.verify()
    assert result.ok
    assert result.head_hash != recorded_elsewhere


def test_shared_connection_append_joins_callers_transaction(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "store.db")
    log = AuditLog(conn, clock=lambda: 5.0)
    conn.execute("CREATE TABLE runs (id TEXT)")
    conn.commit()
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO runs VALUES ('r1')")
    log.append("coordinator", "run.submitted", {"run": "r1"})
    conn.rollback()  # the state change and its audit entry go together
    assert log.entries() == []
    assert log.head() == (0, GENESIS_HASH)
    log.append("coordinator", "run.submitted", {"run": "r2"})  # own transaction, committed
    conn.close()
    with AuditLog(tmp_path / "store.db", clock=lambda: 0.0) as reopened:
        assert [e.detail for e in reopened.entries()] == [{"run": "r2"}]
        assert reopened.verify().ok


def test_non_json_detail_is_a_typed_error(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a.db", clock=lambda: 0.0) as log:
        with pytest.raises(AuditError, match="not JSON-serialisable"):
            log.append("coordinator", "x", {"bad": object()})
        with pytest.raises(AuditError, match="not JSON-serialisable"):
            log.append("coordinator", "x", {"nan": float("nan")})
        assert log.entries() == []


def test_opening_a_non_audit_database_read_only_fails(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(AuditError, match="not a Concordia audit database"):
        AuditLog(other, clock=lambda: 0.0, create=False)
    with pytest.raises(AuditError, match="not found"):
        AuditLog(tmp_path / "missing.db", clock=lambda: 0.0, create=False)


# --- fedctl audit -----------------------------------------------------------------------------


def test_fedctl_audit_verify_ok(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fedctl(["audit", "verify", "--db", str(db), "--output", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and out["checked"] == 5 and len(out["head_hash"]) == 64


def test_fedctl_audit_verify_tampered_exits_1(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _tamper(db, "UPDATE audit_log SET action = 'innocent' WHERE seq = 1")
    assert fedctl(["audit", "verify", "--db", str(db)]) == 1
    assert "TAMPERED" in capsys.readouterr().out


def test_fedctl_audit_lists_entries(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fedctl(["audit", "--db", str(db), "--after", "3", "--output", "json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["seq"] for e in entries] == [4, 5]
    assert entries[0]["detail"] == {"i": 3, "note": "ünïcode"}
    assert fedctl(["audit", "--db", str(db), "--limit", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "action-1" in lines[1]


def test_fedctl_audit_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fedctl(["audit", "verify", "--db", str(tmp_path / "missing.db")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedctl: error:") and "not found" in err and "Traceback" not in err
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    assert fedctl(["audit", "verify", "--db", str(garbage)]) == 2
    assert fedctl(["audit", "--db", str(garbage), "--limit", "0"]) == 2
    assert fedctl(["audit", "verify"]) == 2  # --db missing
    assert "Traceback" not in capsys.readouterr().err


def test_two_writers_on_one_file_keep_one_chain(tmp_path: Path) -> None:
    """Coordinator threads or a CLI beside a running agent: appends serialise, chain stays valid."""
    path = tmp_path / "shared.db"
    ticks = _clock()
    with (
        AuditLog(path, clock=lambda: next(ticks)) as a,
        AuditLog(path, clock=lambda: next(ticks)) as b,
    ):
        for i in range(6):
            (a if i % 2 else b).append("x", "step", {"i": i})
        result = a.verify()
        assert [e.detail["i"] for e in b.entries()] == list(range(6))
    assert result.ok and result.checked == 6
