"""Append-only, hash-chained audit log in SQLite, shared by the coordinator store and each site.

Every entry's hash is SHA-256 over the previous entry's hash and a canonical JSON encoding of the
entry (seq, ts, actor, action, detail, prev_hash), so editing, deleting or reordering an entry
breaks the chain. The head (last seq and hash) is also kept in a separate one-row table, updated in
the same transaction as each append, so a truncated tail is detected too.

Limit, stated plainly: someone who can rewrite the whole database file can rebuild a consistent
chain and head. Only a head hash recorded somewhere else (printed by `fedctl audit verify`, kept in
an operator's notes or another system) detects that; compare it with `AuditVerification.head_hash`.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS_HASH = "0" * 64

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


class AuditError(Exception):
    """The audit database cannot be used (not an audit database, bad entry input)."""


@dataclass(frozen=True)
class AuditEntry:
    """One audit record as stored."""

    seq: int
    ts: float
    actor: str
    action: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    def to_json_dict(self) -> dict[str, Any]:
        """Plain dict for `--output json` and the Admin API."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "actor": self.actor,
            "action": self.action,
            "detail": self.detail,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class AuditVerification:
    """Result of walking the chain: ok, entries checked, the head hash, the first problem."""

    ok: bool
    checked: int
    head_seq: int
    head_hash: str
    problem: str | None


def canonical_json(value: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces, no NaN) so the hash is reproducible."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def entry_hash(
    seq: int, ts: float, actor: str, action: str, detail: Mapping[str, Any], prev_hash: str
) -> str:
    """SHA-256 (hex) chaining an entry to its predecessor."""
    body = canonical_json(
        {
            "seq": seq,
            "ts": ts,
            "actor": actor,
            "action": action,
            "detail": detail,
            "prev_hash": prev_hash,
        }
    )
    return hashlib.sha256(prev_hash.encode("ascii") + b"\n" + body.encode("utf-8")).hexdigest()


class AuditLog:
    """Hash-chained audit log on a SQLite connection (shared) or a database path (owned).

    With a shared connection, `append` joins the caller's open transaction (so a state change and
    its audit entry commit together) or, if none is open, runs in its own IMMEDIATE transaction.
    """

    def __init__(
        self,
        connection_or_path: sqlite3.Connection | str | Path,
        *,
        clock: Clock,
        create: bool = True,
    ) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        if isinstance(connection_or_path, sqlite3.Connection):
            self._conn = connection_or_path
            self._owned = False
        else:
            self._conn = _open(Path(connection_or_path), create=create)
            self._owned = True
        if create:
            # execute(), not executescript(): the latter would commit a caller's open transaction.
            for statement in _SCHEMA:
                self._conn.execute(statement)
            if self._owned:
                self._conn.commit()
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
        with self._lock, self._transaction():
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
        return [_row_to_entry(r) for r in rows]

    def verify(self) -> AuditVerification:
        """Walk the whole chain; report the first edited, missing, reordered or truncated entry."""
        with self._lock:
            head_row = self._conn.execute(
                "SELECT seq, hash FROM audit_head WHERE id = 1"
            ).fetchone()
            cursor = self._conn.execute(
                "SELECT seq, ts, actor, action, detail, prev_hash, hash FROM audit_log ORDER BY seq"
            )
            checked, expected_prev, problem = _walk(cursor)
        head_seq, head_hash = (
            (0, GENESIS_HASH) if head_row is None else (int(head_row[0]), head_row[1])
        )
        if problem is None and (checked != head_seq or expected_prev != head_hash):
            problem = (
                f"chain ends at seq {checked} (hash {expected_prev[:12]}…) but the recorded"
                f" head is seq {head_seq} (hash {head_hash[:12]}…): entries were truncated or"
                " the head was altered"
            )
        return AuditVerification(
            ok=problem is None,
            checked=checked,
            head_seq=head_seq,
            head_hash=head_hash,
            problem=problem,
        )


def _walk(rows: Iterable[Any]) -> tuple[int, str, str | None]:
    """Check seq continuity, prev-hash links and hashes; returns (checked, last hash, problem)."""
    expected_seq = 1
    prev_hash = GENESIS_HASH
    checked = 0
    for row in rows:
        seq = int(row[0])
        if seq != expected_seq:
            return checked, prev_hash, f"seq {expected_seq} is missing (next entry is seq {seq})"
        try:
            entry = _row_to_entry(row)
        except AuditError as exc:
            return checked, prev_hash, f"seq {seq}: {exc}"
        if entry.prev_hash != prev_hash:
            return (
                checked,
                prev_hash,
                (
                    f"seq {seq} does not link to seq {seq - 1} (prev_hash mismatch):"
                    " an entry was reordered, replaced or removed"
                ),
            )
        recomputed = entry_hash(seq, entry.ts, entry.actor, entry.action, entry.detail, prev_hash)
        if recomputed != entry.hash:
            return checked, prev_hash, f"seq {seq} was edited (its hash does not match its content)"
        prev_hash = entry.hash
        checked += 1
        expected_seq += 1
    return checked, prev_hash, None


def _row_to_entry(row: tuple[Any, ...]) -> AuditEntry:
    try:
        detail = json.loads(row[4])
    except (TypeError, ValueError) as exc:
        raise AuditError(f"detail is not valid JSON: {exc}") from exc
    if not isinstance(detail, dict):
        raise AuditError("detail is not a JSON object")
    return AuditEntry(
        seq=int(row[0]),
        ts=float(row[1]),
        actor=str(row[2]),
        action=str(row[3]),
        detail=detail,
        prev_hash=str(row[5]),
        hash=str(row[6]),
    )


def _open(path: Path, *, create: bool) -> sqlite3.Connection:
    """Open a database file: WAL and full sync when creating/writing, read-only otherwise."""
    if create:
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
