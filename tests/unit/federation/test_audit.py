"""Hash-chained audit log: appends chain, and every kind of tampering is detected."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedctl.cli import run as fedctl
from federation.audit import AuditLog
from federation.audit_chain import GENESIS_HASH, entry_hash
from federation.audit_head import AuditError, AuditHead, head_file_path, read_head_file

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


# --- head files: a head recorded elsewhere detects a cut tail, an emptied or replaced log --------


def _head_file(db: Path) -> Path:
    return db.with_name(db.name + ".head")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_append_writes_the_head_file_atomically_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    ticks = _clock()
    with AuditLog(path, clock=lambda: next(ticks)) as log:
        assert log.head_path == head_file_path(path) == _head_file(path)
        assert read_head_file(log.head_path) == AuditHead(0, GENESIS_HASH, None)  # empty log
        for i in range(3):
            entry = log.append("site", "step", {"i": i})
            assert read_head_file(log.head_path) == AuditHead(entry.seq, entry.hash, entry.ts)
            assert _mode(log.head_path) == 0o600
    assert json.loads(_head_file(path).read_text()) == {
        "seq": 3,
        "hash": entry.hash,
        "ts": entry.ts,
    }
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp


def test_cut_tail_with_a_consistent_head_row_is_detected_only_against_a_shipped_head(
    db: Path,
) -> None:
    """The probe: delete the last entries and point the head row at the new last entry (one
    UPDATE, nothing recomputed). Every remaining hash still matches its content, so the chain
    alone cannot tell; the head shipped elsewhere does."""
    shipped = read_head_file(_head_file(db))
    assert shipped.seq == 5
    with AuditLog(db, clock=lambda: 0.0) as log:
        third = log.entries(after=2, limit=1)[0]
    _tamper(
        db,
        "DELETE FROM audit_log WHERE seq > 3",
        f"UPDATE audit_head SET seq = 3, hash = '{third.hash}'",
    )
    with AuditLog(db, clock=lambda: 0.0, create=False) as log:
        assert log.verify().ok  # the chain alone: consistent
        result = log.verify(expect_head=shipped.hash, expect_min_seq=shipped.seq)
        assert not result.ok and result.problem is not None
        assert "an empty or shortened chain does not match an expected head" in result.problem
        only_hash = log.verify(expect_head=shipped.hash)
        assert not only_hash.ok and "is not in the chain" in str(only_hash.problem)
        only_seq = log.verify(expect_min_seq=4)
        assert not only_seq.ok and "shortened" in str(only_seq.problem)


def test_an_emptied_database_does_not_match_an_expected_head(db: Path) -> None:
    shipped = read_head_file(_head_file(db))
    _tamper(db, "DELETE FROM audit_log", "DELETE FROM audit_head")
    with AuditLog(db, clock=lambda: 0.0, create=False) as log:
        assert log.verify().ok and log.verify().checked == 0
        for kwargs in (
            {"expect_head": shipped.hash, "expect_min_seq": shipped.seq},
            {"expect_head": shipped.hash},
            {"expect_min_seq": 1},
        ):
            result = log.verify(**kwargs)  # type: ignore[arg-type]
            assert not result.ok
            assert "an empty or shortened chain does not match an expected head" in str(
                result.problem
            )


def test_a_replaced_database_of_the_same_length_does_not_match(tmp_path: Path, db: Path) -> None:
    shipped = read_head_file(_head_file(db))
    other = tmp_path / "forged.sqlite"
    with AuditLog(other, clock=lambda: 1.0) as forged:
        for i in range(7):
            forged.append("urn:concordia:site:a1", f"action-{i}", {"i": i})
        result = forged.verify(expect_head=shipped.hash, expect_min_seq=shipped.seq)
    assert not result.ok and "is not in the chain" in str(result.problem)


def test_an_earlier_head_still_matches_after_the_log_grew(db: Path) -> None:
    shipped = read_head_file(_head_file(db))
    with AuditLog(db, clock=lambda: 9.0) as log:
        log.append("site", "later", {})
        log.append("site", "later", {})
        result = log.verify(expect_head=shipped.hash, expect_min_seq=shipped.seq)
        assert result.ok and result.expected_head_seq == 5 and result.checked == 7
        assert log.verify(expect_head=GENESIS_HASH, expect_min_seq=0).ok
        with pytest.raises(AuditError, match="64 lowercase hex"):
            log.verify(expect_head="abc")


def test_an_edited_last_entry_is_detected_even_with_the_head_row_updated(db: Path) -> None:
    """Every hash is recomputed from content, the last row's too: changing the last entry and
    writing any hash into it and into the head row does not make it consistent."""
    forged_hash = "f" * 64
    _tamper(
        db,
        f"""UPDATE audit_log SET detail = '{{"i":4,"note":"x"}}', hash = '{forged_hash}'
            WHERE seq = 5""",
        f"UPDATE audit_head SET hash = '{forged_hash}'",
    )
    ok, problem = _verify(db)
    assert not ok and problem is not None and "seq 5 was edited" in problem
    _tamper(db, "UPDATE audit_log SET hash = 'nothex' WHERE seq = 5")
    ok, problem = _verify(db)
    assert not ok and problem is not None and "seq 5" in problem


def test_an_append_in_a_callers_transaction_writes_the_head_file_only_when_flushed(
    tmp_path: Path,
) -> None:
    conn = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    log = AuditLog(conn, clock=lambda: 5.0)
    assert log.head_path == tmp_path / "store.db.head"
    first = log.append("coordinator", "own", {})  # own transaction: written at once
    assert read_head_file(log.head_path).hash == first.hash
    conn.execute("BEGIN IMMEDIATE")
    log.append("coordinator", "rolled-back", {})
    assert log.flush_head() is None  # still in the caller's transaction: nothing written
    conn.execute("ROLLBACK")
    assert log.flush_head() == AuditHead(1, first.hash, 5.0)
    conn.execute("BEGIN IMMEDIATE")
    second = log.append("coordinator", "committed", {})
    conn.execute("COMMIT")
    assert read_head_file(log.head_path).seq == 1
    assert log.flush_head() == AuditHead(2, second.hash, 5.0)
    assert read_head_file(log.head_path) == AuditHead(2, second.hash, 5.0)
    assert log.flush_head() is None  # nothing new
    conn.close()
    assert AuditLog(tmp_path / "x.db", clock=lambda: 0.0, head_file=False).head_path is None


def test_malformed_head_files_are_typed_errors(tmp_path: Path) -> None:
    path = tmp_path / "h"
    for text in ("", "[]", '{"seq": -1, "hash": "' + "0" * 64 + '"}', '{"seq": 1, "hash": "x"}'):
        path.write_text(text)
        with pytest.raises(AuditError, match="head file"):
            read_head_file(path)
    with pytest.raises(AuditError, match="not found"):
        read_head_file(tmp_path / "missing")


def test_fedctl_verify_against_a_shipped_head_file(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped = tmp_path / "elsewhere.head"
    shipped.write_bytes(_head_file(db).read_bytes())
    head = read_head_file(shipped)
    assert fedctl(["audit", "verify", "--db", str(db), "--head-file", str(shipped)]) == 0
    assert "the expected head is seq 5 (the current head)" in capsys.readouterr().out
    with AuditLog(db, clock=lambda: 0.0) as log:
        third = log.entries(after=2, limit=1)[0]
    _tamper(
        db,
        "DELETE FROM audit_log WHERE seq > 3",
        f"UPDATE audit_head SET seq = 3, hash = '{third.hash}'",
    )
    _head_file(db).unlink()  # the attacker removes the local copy too: the chain alone passes
    assert fedctl(["audit", "verify", "--db", str(db)]) == 0
    capsys.readouterr()
    assert fedctl(["audit", "verify", "--db", str(db), "--head-file", str(shipped)]) == 1
    out = capsys.readouterr().out
    assert "TAMPERED" in out and "an empty or shortened chain does not match" in out
    args = ["--expect-head", head.hash, "--expect-min-seq", "5"]
    assert fedctl(["audit", "verify", "--db", str(db), *args, "--output", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["expected_head"]["seq"] == 5
    assert fedctl(["audit", "verify", "--db", str(db), "--expect-min-seq", "3"]) == 0
    capsys.readouterr()
    assert fedctl(["audit", "verify", "--db", str(db), "--expect-head", third.hash]) == 0
    capsys.readouterr()
    # bad input: exit 2, one line, no traceback
    assert fedctl(["audit", "verify", "--db", str(db), "--expect-head", "xyz"]) == 2
    both = ["--head-file", str(shipped), "--expect-head", head.hash]
    assert fedctl(["audit", "verify", "--db", str(db), *both]) == 2
    shipped.write_text("{not json")
    assert fedctl(["audit", "verify", "--db", str(db), "--head-file", str(shipped)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_fedctl_verify_uses_the_head_file_beside_the_database(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tamperer who does not know about the local head file is caught even without a copy."""
    _tamper(db, "DELETE FROM audit_log", "DELETE FROM audit_head")
    assert fedctl(["audit", "verify", "--db", str(db)]) == 1
    out = capsys.readouterr().out
    assert "an empty or shortened chain does not match an expected head" in out
    assert "beside the database" in out


# --- file modes ---------------------------------------------------------------------------------


def test_audit_database_and_its_wal_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # a umask that would give 0644
    try:
        path = tmp_path / "audit.sqlite"
        with AuditLog(path, clock=lambda: 0.0) as log:
            for i in range(20):
                log.append("site", "step", {"i": i, "pad": "x" * 500})
            sides = [Path(str(path) + s) for s in ("-wal", "-shm")]
            assert all(p.exists() for p in sides)  # WAL activity while open
            for p in (path, *sides, _head_file(path)):
                assert _mode(p) == 0o600, p
        # files left with loose modes by an older version are tightened on open
        for p in (path, Path(str(path) + "-wal")):
            if p.exists():
                p.chmod(0o644)
        with AuditLog(path, clock=lambda: 0.0) as log:
            log.append("site", "again", {})
            for p in tmp_path.iterdir():
                assert _mode(p) == 0o600, p
    finally:
        os.umask(old)
