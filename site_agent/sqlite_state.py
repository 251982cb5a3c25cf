"""The shared SQLite plumbing of the site's state: one way to open it, one locking rule.

Why a module of its own: the privacy ledger (site_agent.ledger), the release cache and session
store (site_agent.cache), the approval store (site_agent.approvals) and the processing records
(site_agent.records) all keep their tables in the site's one state file, and must agree on how
it is opened (mode 0600, WAL, durable commits) and how writes serialise (IMMEDIATE
transactions under one lock per connection). None of them needs the ledger for that, so the
plumbing lives here rather than in the ledger module (which still re-exports `open_state_db` and
`SqliteComponent`), with the generic steps of an in-place schema migration (add the missing
columns, rebuild a table whose CHECK SQLite cannot alter).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from federation.fsmodes import prepare_private_sqlite


def open_state_db(path: str | Path) -> sqlite3.Connection:
    """A connection to the site's SQLite state: WAL, durable commits, usable from any thread.

    The database file is created (or tightened to) mode 0600 before SQLite opens it, so its
    -wal/-shm/-journal files are 0600 too (federation.fsmodes).
    """
    prepare_private_sqlite(path)
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # a charge must survive a power cut once committed
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class SqliteComponent:
    """Shared plumbing: own or borrow a connection, serialise threads, IMMEDIATE transactions,
    so the ledger, release cache and session store share one file and one locking rule."""

    def __init__(
        self,
        conn_or_path: sqlite3.Connection | str | Path | SqliteComponent,
        schema: tuple[str, ...],
        migrate: Callable[[sqlite3.Connection], None] | None = None,
    ):
        """``migrate`` runs after ``schema``, in the same transaction (an older database is
        upgraded entirely or not at all). Given another component, this one shares its
        connection *and* its lock, so that one `transaction()` can span both (two components
        on one connection with two locks could interleave their transactions)."""
        self._lock: threading.RLock = threading.RLock()
        self._conn: sqlite3.Connection
        self._owned: bool
        if isinstance(conn_or_path, SqliteComponent):
            self._conn, self._owned = conn_or_path._conn, False
            self._lock = conn_or_path._lock
        elif isinstance(conn_or_path, sqlite3.Connection):
            self._conn, self._owned = conn_or_path, False
        else:
            self._conn, self._owned = open_state_db(conn_or_path), True
        with self._transaction():
            for statement in schema:
                self._conn.execute(statement)
            if migrate is not None:
                migrate(self._conn)

    def close(self) -> None:
        """Close the connection if this object opened it."""
        if self._owned:
            self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Join the caller's open transaction, or run an IMMEDIATE one (takes the write lock
        before reading, so read-check-insert sequences from two connections serialise)."""
        with self._lock:
            if self._conn.in_transaction:
                yield self._conn
                return
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.rollback()
                raise
            self._conn.commit()

    def shares_connection_with(self, other: SqliteComponent) -> bool:
        """Whether a `transaction()` of one is joined by the other's writes (see __init__)."""
        return self._conn is other._conn and self._lock is other._lock

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One IMMEDIATE transaction that this component's writes (and those of components that
        share its connection) join: one durable commit where there were several."""
        with self._transaction():
            yield

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._conn


# ------------------------------------------------------------------ migrations
def add_missing_columns(
    conn: sqlite3.Connection, table: str, columns: Iterable[tuple[str, str]]
) -> None:
    """ALTER TABLE ADD COLUMN every ``(name, declaration)`` that ``table`` lacks (its old rows
    get the declaration's default)."""
    present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    for name, decl in columns:
        if name not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")


def table_sql(conn: sqlite3.Connection, table: str) -> str:
    """The CREATE TABLE statement ``table`` was created with (as SQLite keeps it)."""
    (ddl,) = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    return str(ddl)


def rebuild_table(conn: sqlite3.Connection, table: str, create: str, *after: str) -> None:
    """Recreate ``table`` from ``create`` (its CREATE TABLE statement, naming ``table`` first),
    for what SQLite cannot ALTER (a CHECK): new table, copy, drop, rename, then the ``after``
    statements (its indexes). Every row is kept, and so is the AUTOINCREMENT sequence, so ids
    are never reused. Run it inside a transaction, so a crash leaves the old table intact."""
    seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    # Every column the old table has (all of them known to the new one, or the copy fails and
    # the database does not open: no column is ever dropped silently).
    columns = ", ".join(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))
    rebuilt = f"{table}_rebuild"
    conn.execute(f"DROP TABLE IF EXISTS {rebuilt}")
    conn.execute(create.replace(table, rebuilt, 1))
    conn.execute(f"INSERT INTO {rebuilt} ({columns}) SELECT {columns} FROM {table}")
    conn.execute(f"DROP TABLE {table}")
    conn.execute(f"ALTER TABLE {rebuilt} RENAME TO {table}")
    for statement in after:
        conn.execute(statement)
    if (
        seq is not None
        and not conn.execute(
            "UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = ?", (seq[0], table)
        ).rowcount
    ):
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, seq[0]))
