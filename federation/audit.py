"""Append-only, hash-chained audit log in SQLite, shared by the coordinator store and each site.

Every entry's hash is SHA-256 over the previous entry's hash and a canonical JSON encoding of the
entry (seq, ts, actor, action, detail, prev_hash), so editing, deleting or reordering an entry
breaks the chain. The head (last seq and hash) is also kept in a separate one-row table, updated in
the same transaction as each append, so a tail deleted without touching that row is detected too.

After each committed append the head `{seq, hash, ts}` is also written to a *head file* beside the
database (`<database>.head`, replaced atomically, mode 0600) that an operator can copy elsewhere.

Limits, stated plainly: the chain alone detects an edited, reordered or removed entry in the
middle, but not a tail cut together with the head row (one UPDATE makes the shorter chain
consistent: every remaining hash still matches its content), nor a database emptied or rebuilt
as a whole. Only a head recorded somewhere else detects those: `verify(expect_head=…,
expect_min_seq=…)` (`fedctl audit verify --head-file COPY`) fails when the chain no longer
contains that head or is shorter. Someone who controls the database and every copy of the head
can rewrite history.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from federation.audit_chain import (
    GENESIS_HASH,
    AuditEntry,
    AuditVerification,
    against_expected,
    canonical_json,
    entry_hash,
    row_to_entry,
    walk,
)
from federation.audit_head import (
    HASH_PATTERN,
    AuditError,
    AuditHead,
    head_file_path,
    write_head_file,
)
from federation.fsmodes import prepare_private_sqlite

log = logging.getLogger("concordia.audit")

Clock = Callable[[], float]
"""Returns Unix epoch seconds; injected so tests and replays control time."""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS audit_log (
        seq       INTEGER PRIMARY KEY,
        ts        REAL    NOT NULL,
        actor     TEXT    NOT NULL,
        action    TEXT    NOT NULL,
        detail    TEXT    NOT NULL,
        prev_hash TEXT    NOT NULL,
        hash      TEXT    NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS audit_head (
        id   INTEGER PRIMARY KEY CHECK (id = 1),
        seq  INTEGER NOT NULL,
        hash TEXT    NOT NULL
    )""",
)


class AuditLog:
    """Hash-chained audit log on a SQLite connection (shared) or a database path (owned).

    With a shared connection, `append` joins the caller's open transaction (so a state change and
    its audit entry commit together) or, if none is open, runs in its own IMMEDIATE transaction.

    Head file: `head_file=None` (the default) writes it beside the database file
    (`head_file_path`), `False` writes none, a path writes it there; a read-only log
    (`create=False`) never writes one. An append in its own transaction writes the head file
    after committing; an append that joined a caller's transaction cannot (it may still be rolled
    back), so the caller calls `flush_head()` after its commit. `defer_head=True` leaves the
    head file to `flush_head()` for every append (the entry itself is committed as always): a
    site agent writes it once a second, not on the path of every release.
    """

    def __init__(
        self,
        connection_or_path: sqlite3.Connection | str | Path,
        *,
        clock: Clock,
        create: bool = True,
        head_file: str | Path | Literal[False] | None = None,
        defer_head: bool = False,
    ) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._head_pending = False
        self._defer_head = defer_head
        if isinstance(connection_or_path, sqlite3.Connection):
            self._conn = connection_or_path
            self._owned = False
        else:
            self._conn = _open(Path(connection_or_path), create=create)
            self._owned = True
        if not create or head_file is False:
            self.head_path: Path | None = None
        elif head_file is not None:
            self.head_path = Path(head_file)
        else:
            database = _database_file(self._conn)
            self.head_path = None if database is None else head_file_path(database)
        if create:
            # execute(), not executescript(): the latter would commit a caller's open transaction.
            for statement in _SCHEMA:
                self._conn.execute(statement)
            if self._owned:
                self._conn.commit()
            if self.head_path is not None and not self.head_path.exists():
                self._head_pending = True  # a log from before head files: write its head now
                self.flush_head()
        else:
            self._check_schema()

    def close(self) -> None:
        """Close the connection if this log opened it."""
        if self._owned:
            self._conn.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_schema(self) -> None:
        try:
            rows = self._conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise AuditError(f"not a SQLite database: {exc}") from exc
        names = {r[0] for r in rows}
        missing = {"audit_log", "audit_head"} - names
        if missing:
            raise AuditError(
                f"not a Concordia audit database (missing {', '.join(sorted(missing))})"
            )

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Join an open transaction, or run an IMMEDIATE one (serialises concurrent writers)."""
        if self._conn.in_transaction:
            yield
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.rollback()
            raise
        self._conn.commit()

    def append(self, actor: str, action: str, detail: Mapping[str, Any]) -> AuditEntry:
        """Append one entry and advance the head in the same transaction."""
        if not actor:
            raise AuditError("audit actor must be non-empty")
        if not action:
            raise AuditError("audit action must be non-empty")
        try:
            detail_json = canonical_json(dict(detail))
        except (TypeError, ValueError) as exc:
            raise AuditError(
                f"audit detail for {action!r} is not JSON-serialisable: {exc}"
            ) from exc
        stored_detail: dict[str, Any] = json.loads(detail_json)
        ts = float(self._clock())
        with self._lock:
            joined = self._conn.in_transaction
            entry = self._append_locked(actor, action, ts, stored_detail, detail_json)
            if joined or self._defer_head:
                self._head_pending = True
            else:
                self._write_head(AuditHead(entry.seq, entry.hash, entry.ts))
        return entry

    def _append_locked(
        self, actor: str, action: str, ts: float, stored_detail: dict[str, Any], detail_json: str
    ) -> AuditEntry:
        with self._transaction():
            head = self._conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
            prev_seq, prev_hash = (0, GENESIS_HASH) if head is None else (int(head[0]), head[1])
            seq = prev_seq + 1
            digest = entry_hash(seq, ts, actor, action, stored_detail, prev_hash)
            self._conn.execute(
                "INSERT INTO audit_log (seq, ts, actor, action, detail, prev_hash, hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (seq, ts, actor, action, detail_json, prev_hash, digest),
            )
            self._conn.execute(
                "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                (seq, digest),
            )
        return AuditEntry(seq, ts, actor, action, stored_detail, prev_hash, digest)

    def flush_head(self) -> AuditHead | None:
        """Write the committed head to the head file if appends joined a caller's transaction
        since it was last written; call after committing. Returns the head written, if any."""
        with self._lock:
            if self.head_path is None or not self._head_pending or self._conn.in_transaction:
                return None
            seq, digest = self.head()
            row = self._conn.execute("SELECT ts FROM audit_log WHERE seq = ?", (seq,)).fetchone()
            head = AuditHead(seq, digest, None if row is None else float(row[0]))
            self._write_head(head)
            return head

    def _write_head(self, head: AuditHead) -> None:
        if self.head_path is None:
            return
        try:
            write_head_file(self.head_path, head)
        except OSError as exc:
            # The entry is committed; the head file is a copy for operators. Say so loudly, and
            # try again on the next append.
            self._head_pending = True
            log.warning("cannot write the audit head file %s: %s", self.head_path, exc)
        else:
            self._head_pending = False

    def head(self) -> tuple[int, str]:
        """The recorded head (seq, hash); (0, GENESIS_HASH) for an empty log."""
        with self._lock:
            row = self._conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))

    def entries(self, after: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Entries with seq > after, oldest first, at most limit."""
        if limit < 1:
            raise AuditError(f"limit must be >= 1, got {limit}")
        if after < 0:
            raise AuditError(f"after must be >= 0, got {after}")
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, ts, actor, action, detail, prev_hash, hash FROM audit_log"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        return [row_to_entry(r) for r in rows]

    def verify(
        self, expect_head: str | None = None, expect_min_seq: int | None = None
    ) -> AuditVerification:
        """Walk the whole chain, recomputing every entry's hash from its content; report the
        first edited, missing or reordered entry, or a head row that does not match the chain.

        Against a head recorded elsewhere (a shipped head file): `expect_head` must be the hash
        of an entry in the chain (its head, or an earlier entry if the log grew since) and the
        chain must have at least `expect_min_seq` entries. That is what detects a cut tail with
        a consistently updated head row, and an emptied or replaced database.
        """
        if expect_head is not None and not HASH_PATTERN.match(expect_head):
            raise AuditError("expected head must be 64 lowercase hex digits")
        if expect_min_seq is not None and expect_min_seq < 0:
            raise AuditError(f"expected minimum seq must be >= 0, got {expect_min_seq}")
        with self._lock:
            head_row = self._conn.execute(
                "SELECT seq, hash FROM audit_head WHERE id = 1"
            ).fetchone()
            cursor = self._conn.execute(
                "SELECT seq, ts, actor, action, detail, prev_hash, hash FROM audit_log ORDER BY seq"
            )
            checked, expected_prev, problem, found = walk(cursor, expect_head)
        head_seq, head_hash = (
            (0, GENESIS_HASH) if head_row is None else (int(head_row[0]), str(head_row[1]))
        )
        if problem is None and (checked != head_seq or expected_prev != head_hash):
            problem = (
                f"chain ends at seq {checked} (hash {expected_prev[:12]}…) but the recorded"
                f" head is seq {head_seq} (hash {head_hash[:12]}…): entries were truncated or"
                " the head was altered"
            )
        if problem is None:
            problem = against_expected(checked, expected_prev, expect_head, expect_min_seq, found)
        return AuditVerification(
            ok=problem is None,
            checked=checked,
            head_seq=head_seq,
            head_hash=head_hash,
            problem=problem,
            expected_head_seq=found if problem is None else None,
        )


def _database_file(conn: sqlite3.Connection) -> str | None:
    """The file behind a connection's main database, None for an in-memory one."""
    for _, name, file in conn.execute("PRAGMA database_list").fetchall():
        if name == "main":
            return str(file) or None
    return None


def _open(path: Path, *, create: bool) -> sqlite3.Connection:
    """Open a database file: WAL and full sync when creating/writing, read-only otherwise.

    A database created here is mode 0600, and so are the -wal/-shm files SQLite makes beside it.
    """
    if create:
        prepare_private_sqlite(path)
        conn = sqlite3.connect(path, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn
    if not path.is_file():
        raise AuditError(f"audit database not found: {path}")
    try:
        return sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False, timeout=30.0
        )
    except sqlite3.Error as exc:
        raise AuditError(f"cannot open audit database {path}: {exc}") from exc
