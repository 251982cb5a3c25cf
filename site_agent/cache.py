"""Prepared releases and secure-aggregation session state, kept across restarts (site SQLite file).

The retry rule (issue 4): a round that fails is retried in a fresh secagg session. The site may
send the *same* cached update again, at no new privacy cost, only if it never answered an Unmask
for it. Once it has unmasked in one session, reusing the update in another that also unmasks,
with a different survivor set, would let the coordinator subtract the two sums and isolate
individual updates. So `mark_unmasked` is committed (durably) *before* the site answers an
Unmask, and from then on `reusable` is False: the site retrains and is charged again.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from site_agent.ledger import SqliteComponent

_CACHE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS release_cache (
        run_id   TEXT    NOT NULL,
        purpose  TEXT    NOT NULL,
        round    INTEGER NOT NULL,
        vector   BLOB    NOT NULL,
        meta     TEXT    NOT NULL,
        unmasked INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, purpose, round)
    )""",
)
_SESSION_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS secagg_sessions (
        run_id  TEXT    NOT NULL,
        purpose TEXT    NOT NULL,
        round   INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        data    BLOB    NOT NULL,
        PRIMARY KEY (run_id, purpose, round, attempt)
    )""",
)

SessionKey = tuple[str, str, int, int]
"""(run_id, purpose, round, attempt)."""


@dataclass(frozen=True)
class CachedRelease:
    """A quantised release ready to be masked, and whether it was ever unmasked."""

    vector: np.ndarray
    meta: dict[str, Any]
    unmasked: bool


class ReleaseCache(SqliteComponent):
    """One prepared (already charged) release per (run, purpose, round)."""

    def __init__(self, conn_or_path: sqlite3.Connection | str | Path) -> None:
        super().__init__(conn_or_path, _CACHE_SCHEMA)

    def put(
        self, run_id: str, purpose: str, round: int, vector: np.ndarray, meta: dict[str, Any]
    ) -> None:
        """Store a fresh release, replacing any older one for the key (unmasked = False: the new
        vector has never been unmasked anywhere)."""
        array = np.asarray(vector)
        if array.dtype != np.uint32 or array.ndim != 1:
            raise ValueError(
                f"a cached release must be a 1-D uint32 vector, got {array.dtype} {array.shape}"
            )
        try:
            meta_json = json.dumps(meta, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"release meta is not JSON-serialisable: {exc}") from None
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO release_cache (run_id, purpose, round, vector, meta, unmasked)"
                " VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT (run_id, purpose, round) DO UPDATE SET"
                " vector = excluded.vector, meta = excluded.meta, unmasked = 0",
                (run_id, purpose, int(round), array.astype("<u4").tobytes(), meta_json),
            )

    def get(self, run_id: str, purpose: str, round: int) -> CachedRelease | None:
        with self._reading() as conn:
            row = conn.execute(
                "SELECT vector, meta, unmasked FROM release_cache"
                " WHERE run_id = ? AND purpose = ? AND round = ?",
                (run_id, purpose, int(round)),
            ).fetchone()
        if row is None:
            return None
        vector = np.frombuffer(row[0], dtype="<u4").astype(np.uint32)
        return CachedRelease(vector=vector, meta=json.loads(row[1]), unmasked=bool(row[2]))

    def mark_unmasked(self, run_id: str, purpose: str, round: int) -> None:
        """Call BEFORE answering an Unmask: the cached release may never be reused after it.
        Committed durably (synchronous=FULL) before returning. No cached release: nothing to
        protect, so nothing is recorded."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE release_cache SET unmasked = 1"
                " WHERE run_id = ? AND purpose = ? AND round = ?",
                (run_id, purpose, int(round)),
            )

    def reusable(self, run_id: str, purpose: str, round: int) -> bool:
        """True if a release is cached for the key and was never unmasked."""
        cached = self.get(run_id, purpose, round)
        return cached is not None and not cached.unmasked


class SessionStore(SqliteComponent):
    """Serialised secagg ClientSession bytes per (run_id, purpose, round, attempt)."""

    def __init__(self, conn_or_path: sqlite3.Connection | str | Path) -> None:
        super().__init__(conn_or_path, _SESSION_SCHEMA)

    def save(self, key: SessionKey, data: bytes) -> None:
        run_id, purpose, round, attempt = key
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO secagg_sessions (run_id, purpose, round, attempt, data)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, purpose, round, attempt)"
                " DO UPDATE SET data = excluded.data",
                (run_id, purpose, int(round), int(attempt), bytes(data)),
            )

    def load(self, key: SessionKey) -> bytes | None:
        run_id, purpose, round, attempt = key
        with self._reading() as conn:
            row = conn.execute(
                "SELECT data FROM secagg_sessions"
                " WHERE run_id = ? AND purpose = ? AND round = ? AND attempt = ?",
                (run_id, purpose, int(round), int(attempt)),
            ).fetchone()
        return None if row is None else bytes(row[0])

    def drop_run(self, run_id: str) -> None:
        """Forget a finished run's sessions (they hold key material no longer needed)."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM secagg_sessions WHERE run_id = ?", (run_id,))
