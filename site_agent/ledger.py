"""The site's privacy ledger: every release is charged here, in SQLite, *before* it leaves the site.

A release is one `accounting.Entry` (σ, q, steps) tagged with the run, purpose, round, attempt and
the data partition it was computed on. ε is never stored as a running total: it is recomputed by
`accounting.epsilon_of` from the recorded entries, so the ledger survives restarts and composes
across rounds and runs exactly as if one accountant had seen the whole history.

Parallel composition. The training partition (federated statistics and DP-SGD) and the held-out
partition (evaluation metrics) are disjoint sets of patients chosen by a keyed hash of each
patient's own key, independent of every data value (site_agent.data). Adding or removing one
patient changes exactly one partition, so the site's ε is the MAX of the two partitions' ε, not
their sum. That holds only while the split never changes: the ledger stores the split's
fingerprint and `check_split` refuses a different one once anything has been released.
docs/site-config.md states the argument and its limits in full.

Concurrency: a charge is one IMMEDIATE transaction (read history, compute ε, insert), so two
processes or connections charging at once are serialised and can never both pass a cap.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from federation.fsmodes import prepare_private_sqlite
from site_agent.accounting import AccountantKind, Entry, epsilon_of

Partition = Literal["train", "holdout"]
PARTITIONS: tuple[Partition, ...] = ("train", "holdout")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ledger_releases (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        ts               REAL    NOT NULL,
        run_id           TEXT    NOT NULL,
        purpose          TEXT    NOT NULL,
        round            INTEGER NOT NULL,
        attempt          INTEGER NOT NULL,
        partition        TEXT    NOT NULL CHECK (partition IN ('train', 'holdout')),
        noise_multiplier REAL    NOT NULL,
        sample_rate      REAL    NOT NULL,
        steps            INTEGER NOT NULL,
        delta            REAL    NOT NULL,
        epsilon_run      REAL    NOT NULL,
        epsilon_lifetime REAL    NOT NULL,
        accountant       TEXT    NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS ledger_releases_run ON ledger_releases (run_id)",
    """CREATE TABLE IF NOT EXISTS ledger_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
)
_SPLIT_KEY = "split_fingerprint"


class BudgetExceeded(Exception):
    """A release would take the site past a cap; nothing was recorded and nothing may be sent."""


class SplitChanged(Exception):
    """The held-out split differs from the one the recorded releases were computed on (mixing
    splits would put a patient in both partitions and void parallel composition)."""


@dataclass(frozen=True)
class Charge:
    """The site's ε (max over partitions) after the release was recorded."""

    epsilon_run: float
    epsilon_lifetime: float
    release_id: int


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

    def __init__(self, conn_or_path: sqlite3.Connection | str | Path, schema: tuple[str, ...]):
        self._lock = threading.RLock()
        if isinstance(conn_or_path, sqlite3.Connection):
            self._conn, self._owned = conn_or_path, False
        else:
            self._conn, self._owned = open_state_db(conn_or_path), True
        with self._transaction():
            for statement in schema:
                self._conn.execute(statement)

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

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._conn


def _max_epsilon(rows: list[tuple[str, Entry]], delta: float, kind: AccountantKind) -> float:
    """ε of disjoint partitions composed in parallel: the largest partition ε."""
    return max(
        epsilon_of([entry for part, entry in rows if part == partition], delta, kind)
        for partition in PARTITIONS
    )


class PrivacyLedger(SqliteComponent):
    """Releases recorded before they leave; ε per run and over the site's lifetime."""

    def __init__(
        self,
        conn_or_path: sqlite3.Connection | str | Path,
        clock: Callable[[], float],
        accountant: AccountantKind = "rdp",
        *,
        split_fingerprint: str | None = None,
    ) -> None:
        if accountant not in ("rdp", "prv"):
            raise ValueError(f"accountant must be 'rdp' or 'prv', got {accountant!r}")
        super().__init__(conn_or_path, _SCHEMA)
        self._clock = clock
        self._kind: AccountantKind = accountant
        if split_fingerprint is not None:
            self.check_split(split_fingerprint)

    # ------------------------------------------------------------------ the split
    def check_split(self, fingerprint: str) -> None:
        """Record the split fingerprint, or raise SplitChanged if releases used another one; a new
        split is allowed only while nothing was released under the old one."""
        if not fingerprint:
            raise ValueError("split fingerprint must be non-empty")
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT value FROM ledger_meta WHERE key = ?", (_SPLIT_KEY,)
            ).fetchone()
            if row is not None and row[0] == fingerprint:
                return
            if row is not None:
                released = conn.execute("SELECT COUNT(*) FROM ledger_releases").fetchone()[0]
                if released:
                    raise SplitChanged(
                        "the held-out split changed (data.split_salt, data.holdout_fraction or"
                        f" data.id_column) after {released} releases were charged under the"
                        " old one; restore the old settings or start a new privacy ledger"
                        " (a new state_dir), since mixing splits voids the parallel-composition"
                        " accounting"
                    )
            conn.execute(
                "INSERT INTO ledger_meta (key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (_SPLIT_KEY, fingerprint),
            )

    # ------------------------------------------------------------------ charging
    def charge(
        self,
        *,
        run_id: str,
        purpose: str,
        round: int,
        attempt: int,
        partition: Literal["train", "holdout"],
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        delta: float,
        run_epsilon_cap: float,
        lifetime_epsilon_cap: float,
    ) -> Charge:
        """Record one release if the site stays within both caps; else BudgetExceeded, no row."""
        if partition not in PARTITIONS:
            raise ValueError(f"partition must be 'train' or 'holdout', got {partition!r}")
        if not run_id:
            raise ValueError("run_id must be non-empty")
        if not purpose:
            raise ValueError("purpose must be non-empty")
        for name, cap in (("run", run_epsilon_cap), ("lifetime", lifetime_epsilon_cap)):
            if not cap > 0:
                raise ValueError(f"{name} ε cap must be > 0, got {cap}")
        new = Entry(float(noise_multiplier), float(sample_rate), int(steps))
        epsilon_of([], delta, self._kind)  # validates delta before taking the write lock
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT run_id, partition, noise_multiplier, sample_rate, steps"
                " FROM ledger_releases ORDER BY id"
            ).fetchall()
            everything = [(p, Entry(s, q, n)) for _, p, s, q, n in rows]
            this_run = [(p, Entry(s, q, n)) for r, p, s, q, n in rows if r == run_id]
            eps_run = _max_epsilon([*this_run, (partition, new)], delta, self._kind)
            eps_life = _max_epsilon([*everything, (partition, new)], delta, self._kind)
            if eps_run > run_epsilon_cap:
                raise BudgetExceeded(
                    f"run {run_id}: ε would reach {eps_run:.4g}, over the run limit"
                    f" {run_epsilon_cap:g} (a {purpose} release on the {partition} partition)"
                )
            if eps_life > lifetime_epsilon_cap:
                raise BudgetExceeded(
                    f"lifetime ε would reach {eps_life:.4g}, over the site's lifetime limit"
                    f" {lifetime_epsilon_cap:g} (a {purpose} release of run {run_id} on the"
                    f" {partition} partition)"
                )
            cursor = conn.execute(
                "INSERT INTO ledger_releases (ts, run_id, purpose, round, attempt, partition,"
                " noise_multiplier, sample_rate, steps, delta, epsilon_run, epsilon_lifetime,"
                " accountant) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    float(self._clock()),
                    run_id,
                    purpose,
                    int(round),
                    int(attempt),
                    partition,
                    new.noise_multiplier,
                    new.sample_rate,
                    new.steps,
                    float(delta),
                    eps_run,
                    eps_life,
                    self._kind,
                ),
            )
            release_id = cursor.lastrowid
        assert release_id is not None
        return Charge(epsilon_run=eps_run, epsilon_lifetime=eps_life, release_id=release_id)

    # ------------------------------------------------------------------ reading
    def _entries(self, run_id: str | None) -> list[tuple[str, Entry]]:
        query = "SELECT partition, noise_multiplier, sample_rate, steps FROM ledger_releases"
        args: tuple[Any, ...] = ()
        if run_id is not None:
            query, args = query + " WHERE run_id = ?", (run_id,)
        with self._reading() as conn:
            rows = conn.execute(query + " ORDER BY id", args).fetchall()
        return [(p, Entry(s, q, n)) for p, s, q, n in rows]

    def epsilon_run(self, run_id: str, delta: float) -> float:
        """ε this run has spent (max over the two partitions), as every task result reports it."""
        return _max_epsilon(self._entries(run_id), delta, self._kind)

    def epsilon_lifetime(self, delta: float) -> float:
        """ε the site has spent over all runs ever (max over the two partitions): what Hello and
        the policy's lifetime check use."""
        return _max_epsilon(self._entries(None), delta, self._kind)

    def history(self, run_id: str | None = None, partition: str | None = None) -> list[Entry]:
        """The recorded entries, oldest first, optionally of one run and/or one partition."""
        if partition is not None and partition not in PARTITIONS:
            raise ValueError(f"partition must be 'train' or 'holdout', got {partition!r}")
        return [e for p, e in self._entries(run_id) if partition is None or p == partition]

    def releases(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Every recorded release as a plain dict (for audit and reports), oldest first."""
        query = "SELECT * FROM ledger_releases"
        args: tuple[Any, ...] = ()
        if run_id is not None:
            query, args = query + " WHERE run_id = ?", (run_id,)
        with self._reading() as conn:
            cursor = conn.execute(query + " ORDER BY id", args)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
