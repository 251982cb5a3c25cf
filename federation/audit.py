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

import hashlib
import json
import logging
import math
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from federation.fsmodes import prepare_private_sqlite, write_private_file_atomic

GENESIS_HASH = "0" * 64
HEAD_FILE_SUFFIX = ".head"
"""The head file sits beside its database: `audit.sqlite` → `audit.sqlite.head`."""

_HASH_PATTERN = re.compile(r"^[0-9a-f]{64}$")
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
    """Result of walking the chain: ok, entries checked, the head hash, the first problem.

    `expected_head_seq` is the seq at which an expected head (`verify(expect_head=…)`) was found
    in the chain (entries after it were appended since that head was recorded), else None.
    """

    ok: bool
    checked: int
    head_seq: int
    head_hash: str
    problem: str | None
    expected_head_seq: int | None = None


@dataclass(frozen=True)
class AuditHead:
    """A chain head as written to a head file: the last entry's seq, hash and timestamp."""

    seq: int
    hash: str
    ts: float | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The head as the head file and `fedctl audit verify --output json` spell it, so a copy
        kept elsewhere can be compared field by field."""
        return {"seq": self.seq, "hash": self.hash, "ts": self.ts}


def head_file_path(database: str | Path) -> Path:
    """Where the head file of the audit database at `database` lives."""
    return Path(str(database) + HEAD_FILE_SUFFIX)


def write_head_file(path: str | Path, head: AuditHead) -> None:
    """Replace the head file atomically (mode 0600) with `{"seq", "hash", "ts"}` JSON."""
    text = json.dumps(head.to_json_dict(), sort_keys=True) + "\n"
    write_private_file_atomic(path, text.encode("ascii"))


def read_head_file(path: str | Path) -> AuditHead:
    """Read a head file (or a shipped copy of one); AuditError if missing or malformed."""
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AuditError(f"head file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditError(f"cannot read head file {path}: {exc}") from None
    try:
        data = json.loads(raw)
    except ValueError:
        raise AuditError(f"head file {path} is not JSON") from None
    if not isinstance(data, dict):
        raise AuditError(f"head file {path} is not a JSON object")
    seq, digest, ts = data.get("seq"), data.get("hash"), data.get("ts")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise AuditError(f"head file {path}: seq must be an integer >= 0")
    if not isinstance(digest, str) or not _HASH_PATTERN.match(digest):
        raise AuditError(f"head file {path}: hash must be 64 lowercase hex digits")
    if ts is not None and (
        isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts)
    ):
        raise AuditError(f"head file {path}: ts must be a number")
    return AuditHead(seq, digest, None if ts is None else float(ts))


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

    Head file: `head_file=None` (the default) writes it beside the database file
    (`head_file_path`), `False` writes none, a path writes it there; a read-only log
    (`create=False`) never writes one. An append in its own transaction writes the head file
    after committing; an append that joined a caller's transaction cannot (it may still be rolled
    back), so the caller calls `flush_head()` after its commit.
    """

    def __init__(
        self,
        connection_or_path: sqlite3.Connection | str | Path,
        *,
        clock: Clock,
        create: bool = True,
        head_file: str | Path | Literal[False] | None = None,
    ) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._head_pending = False
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
            if joined:
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
        return [_row_to_entry(r) for r in rows]

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
        if expect_head is not None and not _HASH_PATTERN.match(expect_head):
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
            checked, expected_prev, problem, found = _walk(cursor, expect_head)
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
            problem = _against_expected(checked, expected_prev, expect_head, expect_min_seq, found)
        return AuditVerification(
            ok=problem is None,
            checked=checked,
            head_seq=head_seq,
            head_hash=head_hash,
            problem=problem,
            expected_head_seq=found if problem is None else None,
        )


def _against_expected(
    checked: int,
    last_hash: str,
    expect_head: str | None,
    expect_min_seq: int | None,
    found: int | None,
) -> str | None:
    """The problem, if an intact chain does not match a head recorded elsewhere."""
    if expect_head is None and expect_min_seq is None:
        return None
    minimum = expect_min_seq or 0
    shortened = checked < minimum or (checked == 0 and expect_head not in (None, GENESIS_HASH))
    if shortened:
        expected = f"seq {minimum}" if minimum else f"hash {str(expect_head)[:12]}…"
        return (
            "an empty or shortened chain does not match an expected head: the chain has"
            f" {checked} entries, the expected head is {expected}; entries were removed from"
            " the end or the log was emptied or replaced"
        )
    if expect_head is not None and found is None:
        return (
            f"the expected head {expect_head[:12]}… is not in the chain (its head is seq"
            f" {checked}, hash {last_hash[:12]}…): the log was replaced or rewritten, or cut"
            " back to before the expected head"
        )
    return None


def _walk(rows: Iterable[Any], want: str | None = None) -> tuple[int, str, str | None, int | None]:
    """Check seq continuity, prev-hash links and every hash (recomputed from content, the last
    entry's too); returns (checked, last hash, problem, seq whose hash is `want` or None)."""
    expected_seq = 1
    prev_hash = GENESIS_HASH
    checked = 0
    found = 0 if want == GENESIS_HASH else None
    for row in rows:
        try:
            seq = int(row[0])
        except (TypeError, ValueError):
            return checked, prev_hash, f"seq {expected_seq}: seq is not an integer", found
        if seq != expected_seq:
            return (
                checked,
                prev_hash,
                f"seq {expected_seq} is missing (next entry is seq {seq})",
                found,
            )
        try:
            entry = _row_to_entry(row)
            recomputed = entry_hash(
                seq, entry.ts, entry.actor, entry.action, entry.detail, prev_hash
            )
        except (AuditError, TypeError, ValueError) as exc:
            return checked, prev_hash, f"seq {seq}: {exc}", found
        if entry.prev_hash != prev_hash:
            return (
                checked,
                prev_hash,
                (
                    f"seq {seq} does not link to seq {seq - 1} (prev_hash mismatch):"
                    " an entry was reordered, replaced or removed"
                ),
                found,
            )
        if recomputed != entry.hash:
            return (
                checked,
                prev_hash,
                f"seq {seq} was edited (its hash does not match its content)",
                found,
            )
        prev_hash = entry.hash
        checked += 1
        expected_seq += 1
        if want is not None and entry.hash == want:
            found = seq
    return checked, prev_hash, None, found


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
