"""The site's state is private: its folder 0700, every SQLite file (and SQLite's own -wal/-shm/
-journal files beside it) 0600, whatever the umask, and older loose files are tightened."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from federation.audit import AuditLog
from federation.fsmodes import (
    ensure_private_dir,
    ensure_private_file,
    prepare_private_sqlite,
    write_private_file_atomic,
)
from site_agent.cache import ReleaseCache
from site_agent.ledger import PrivacyLedger
from site_agent.sqlite_state import open_state_db

pytestmark = pytest.mark.unit


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def loose_umask() -> Iterator[None]:
    """The usual umask, under which a plain create gives 0644 files and 0755 folders."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_plain_sqlite_would_create_0644_files(tmp_path: Path) -> None:
    """The baseline these tests guard against (so they can fail)."""
    conn = sqlite3.connect(tmp_path / "plain.sqlite")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    assert _mode(tmp_path / "plain.sqlite") == 0o644
    assert _mode(tmp_path / "plain.sqlite-wal") == 0o644
    conn.close()


def test_state_dir_is_created_0700_and_an_existing_one_is_tightened(tmp_path: Path) -> None:
    created = ensure_private_dir(tmp_path / "a" / "state")
    assert created == tmp_path / "a" / "state" and _mode(created) == 0o700
    existing = tmp_path / "old-state"
    existing.mkdir(mode=0o755)
    assert _mode(existing) == 0o755
    ensure_private_dir(existing)
    assert _mode(existing) == 0o700
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError):
        ensure_private_dir(tmp_path / "file")


def test_site_database_and_its_wal_files_are_0600_after_wal_activity(tmp_path: Path) -> None:
    state = ensure_private_dir(tmp_path / "state")
    db = state / "site.sqlite"
    ledger = PrivacyLedger(db, clock=lambda: 1.0, split_fingerprint="fp")
    cache = ReleaseCache(db)
    audit = AuditLog(state / "audit.sqlite", clock=lambda: 1.0)
    for round_ in range(5):
        ledger.charge(
            run_id="run-1",
            purpose="update",
            round=round_,
            attempt=0,
            partition="train",
            noise_multiplier=5.0,
            sample_rate=0.01,
            steps=10,
            delta=1e-5,
            run_epsilon_cap=100.0,
            lifetime_epsilon_cap=100.0,
        )
        cache.put("run-1", "update", round_, np.arange(1000, dtype=np.uint32), {"round": round_})
        audit.append("hospital-a", "released", {"round": round_})
    names = {p.name for p in state.iterdir()}
    assert {"site.sqlite-wal", "site.sqlite-shm", "audit.sqlite-wal", "audit.sqlite-shm"} <= names
    for path in state.iterdir():
        assert _mode(path) == 0o600, path.name
    ledger.close()
    cache.close()
    audit.close()


def test_rollback_journal_is_0600_too(tmp_path: Path) -> None:
    db = tmp_path / "journal.sqlite"
    prepare_private_sqlite(db)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=PERSIST")  # keeps the -journal file after commits
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    assert _mode(Path(str(db) + "-journal")) == 0o600


def test_loose_files_from_an_older_version_are_tightened_on_open(tmp_path: Path) -> None:
    db = tmp_path / "site.sqlite"
    old = sqlite3.connect(db, isolation_level=None)  # an older agent, still open: 0644 files
    old.execute("PRAGMA journal_mode=WAL")
    old.execute("CREATE TABLE t (x)")
    sides = [Path(str(db) + "-wal"), Path(str(db) + "-shm")]
    assert [_mode(p) for p in (db, *sides)] == [0o644, 0o644, 0o644]
    conn = open_state_db(db)
    conn.execute("INSERT INTO t VALUES (1)")
    assert [_mode(p) for p in (db, *sides)] == [0o600, 0o600, 0o600]
    conn.close()
    old.close()


def test_private_file_helpers(tmp_path: Path) -> None:
    path = ensure_private_file(tmp_path / "f")
    assert path.read_bytes() == b"" and _mode(path) == 0o600
    path.write_bytes(b"kept")
    path.chmod(0o666)
    ensure_private_file(path)
    assert path.read_bytes() == b"kept" and _mode(path) == 0o600
    write_private_file_atomic(tmp_path / "g", b"one")
    write_private_file_atomic(tmp_path / "g", b"two")
    assert (tmp_path / "g").read_bytes() == b"two" and _mode(tmp_path / "g") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "g"]
    assert prepare_private_sqlite(":memory:") == Path(":memory:")
    assert not (tmp_path / ":memory:").exists()
