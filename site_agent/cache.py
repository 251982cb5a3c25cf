"""Prepared releases and secure-aggregation session state, kept across restarts (site SQLite file).

One release, one session, forever. A release (run, purpose, round) is bound, durably and before
its masked input leaves the site, to the first session that masks it (`bind`); it is never masked
in another session, so no two session sums can ever share it (a coordinator could otherwise
subtract one from the other). A retried step whose release was already masked somewhere gets a
new release, trained and charged again; a release that was prepared but never masked (the
session died earlier) is reused at no new cost (`reusable`). Session keys, once advertised, are
never advertised again (`SessionStore.claim`), even after the run ends.

Once a run ends the release vectors are deleted (`forget_vectors`); their SHA-256 and bindings
stay, so the rules above still hold and the DPO can see what was released where.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from site_agent.sealing import StateSealer
from site_agent.sqlite_state import SqliteComponent

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
# Columns added after the first release of the table (older site databases are migrated).
_CACHE_COLUMNS = {"session": "TEXT", "sha256": "TEXT NOT NULL DEFAULT ''"}
_SESSION_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS secagg_sessions (
        run_id  TEXT    NOT NULL,
        purpose TEXT    NOT NULL,
        round   INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        data    BLOB    NOT NULL,
        PRIMARY KEY (run_id, purpose, round, attempt)
    )""",
    """CREATE TABLE IF NOT EXISTS secagg_session_log (
        session    TEXT PRIMARY KEY,
        advertised REAL NOT NULL
    )""",
)

SessionKey = tuple[str, str, int, int]
"""(run_id, purpose, round, attempt)."""


class ReleaseBound(Exception):
    """The release is bound to another secure-aggregation session; it is never masked again."""


@dataclass(frozen=True)
class CachedRelease:
    """A quantised release ready to be masked; `vector` is None once the run ended.

    `session` is the session it is bound to (None: never masked), `unmasked` whether this site
    answered that session's Unmask.
    """

    vector: np.ndarray | None
    meta: dict[str, Any]
    unmasked: bool
    session: str | None
    sha256: str


class ReleaseCache(SqliteComponent):
    """One prepared (already charged) release per (run, purpose, round), bound to one session.

    With a `sealer` the vectors are encrypted at rest (site_agent/sealing.py)."""

    def __init__(
        self, conn_or_path: sqlite3.Connection | str | Path, sealer: StateSealer | None = None
    ) -> None:
        super().__init__(conn_or_path, _CACHE_SCHEMA)
        self._sealer = sealer
        with self._transaction() as conn:
            present = {row[1] for row in conn.execute("PRAGMA table_info(release_cache)")}
            for column, declaration in _CACHE_COLUMNS.items():
                if column not in present:
                    conn.execute(f"ALTER TABLE release_cache ADD COLUMN {column} {declaration}")

    def put(
        self, run_id: str, purpose: str, round: int, vector: np.ndarray, meta: dict[str, Any]
    ) -> None:
        """Store a fresh (already charged) release, replacing any older one for the key; the new
        one is bound to no session yet. An older one bound to a still-open session stays in that
        session's sum only: the two are different releases, each charged."""
        array = np.asarray(vector)
        if array.dtype != np.uint32 or array.ndim != 1:
            raise ValueError(
                f"a cached release must be a 1-D uint32 vector, got {array.dtype} {array.shape}"
            )
        try:
            meta_json = json.dumps(meta, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"release meta is not JSON-serialisable: {exc}") from None
        data = array.astype("<u4").tobytes()
        digest = hashlib.sha256(data).hexdigest()
        if self._sealer is not None:
            data = self._sealer.seal(data, _release_row(run_id, purpose, round))
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO release_cache"
                " (run_id, purpose, round, vector, meta, unmasked, session, sha256)"
                " VALUES (?, ?, ?, ?, ?, 0, NULL, ?) ON CONFLICT (run_id, purpose, round) DO UPDATE"
                " SET vector = excluded.vector, meta = excluded.meta, unmasked = 0,"
                " session = NULL, sha256 = excluded.sha256",
                (run_id, purpose, int(round), data, meta_json, digest),
            )

    def get(self, run_id: str, purpose: str, round: int) -> CachedRelease | None:
        """The prepared release of a step with its binding, or None: what the MaskedInput stage
        masks, and what the retry rule reads."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT vector, meta, unmasked, session, sha256 FROM release_cache"
                " WHERE run_id = ? AND purpose = ? AND round = ?",
                (run_id, purpose, int(round)),
            ).fetchone()
        if row is None:
            return None
        vector = None
        if row[0]:
            data = bytes(row[0])
            if self._sealer is not None:
                data = self._sealer.open(data, _release_row(run_id, purpose, round))
            vector = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        return CachedRelease(
            vector=vector,
            meta=json.loads(row[1]),
            unmasked=bool(row[2]),
            session=row[3],
            sha256=row[4],
        )

    def bind(self, run_id: str, purpose: str, round: int, session: str) -> CachedRelease:
        """Bind the release to `session` before it is masked (committed durably first).

        Idempotent for the session it is already bound to (a re-asked stage of the same session
        masks with the same keys, so it reveals nothing new). Raises ReleaseBound for any other
        session, and LookupError when there is no release, or its vector was deleted.
        """
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT session, length(vector) FROM release_cache"
                " WHERE run_id = ? AND purpose = ? AND round = ?",
                (run_id, purpose, int(round)),
            ).fetchone()
            if row is None or not row[1]:
                raise LookupError("no prepared release to mask")
            if row[0] is not None and row[0] != session:
                raise ReleaseBound(
                    f"this release was already masked in session {row[0]}; it is never masked"
                    " in another one"
                )
            conn.execute(
                "UPDATE release_cache SET session = ?"
                " WHERE run_id = ? AND purpose = ? AND round = ?",
                (session, run_id, purpose, int(round)),
            )
        cached = self.get(run_id, purpose, round)
        assert cached is not None
        return cached

    def mark_unmasked(self, run_id: str, purpose: str, round: int) -> None:
        """Record (durably, BEFORE answering) that this site answered the session's Unmask."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE release_cache SET unmasked = 1"
                " WHERE run_id = ? AND purpose = ? AND round = ?",
                (run_id, purpose, int(round)),
            )

    def reusable(self, run_id: str, purpose: str, round: int) -> bool:
        """True if a release is cached for the key and was never masked in any session: only
        then may a retried step reuse it at no new charge (a masked one would be in two sums)."""
        cached = self.get(run_id, purpose, round)
        return cached is not None and cached.vector is not None and cached.session is None

    def forget_vectors(self, run_id: str) -> int:
        """Delete the run's release vectors (the run ended: patient-derived values are not kept
        past their use); keep hashes and bindings for the retry rule and the DPO."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE release_cache SET vector = x'' WHERE run_id = ? AND length(vector) > 0",
                (run_id,),
            )
        return int(cursor.rowcount)


class SessionStore(SqliteComponent):
    """Serialised secagg ClientSession bytes per (run_id, purpose, round, attempt), so a
    restarted agent resumes its sessions, and the log of every session key ever advertised.
    With a `sealer` the states (private keys, shares) are encrypted at rest."""

    def __init__(
        self,
        conn_or_path: sqlite3.Connection | str | Path | SqliteComponent,
        sealer: StateSealer | None = None,
    ) -> None:
        """Given the `ReleaseCache`, the two share a connection, so a release's binding and the
        session state that masked it commit together (`SqliteComponent.transaction`)."""
        super().__init__(conn_or_path, _SESSION_SCHEMA)
        self._sealer = sealer

    def save(self, key: SessionKey, data: bytes) -> None:
        """Persist a session's client state after every stage, so a restarted agent answers the
        next stage with the same keys instead of starting (and advertising) anew."""
        run_id, purpose, round, attempt = key
        blob = bytes(data)
        if self._sealer is not None:
            blob = self._sealer.seal(blob, _session_row(key))
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO secagg_sessions (run_id, purpose, round, attempt, data)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, purpose, round, attempt)"
                " DO UPDATE SET data = excluded.data",
                (run_id, purpose, int(round), int(attempt), blob),
            )

    def load(self, key: SessionKey) -> bytes | None:
        """A session's saved client state, or None if this site never joined that session."""
        run_id, purpose, round, attempt = key
        with self._reading() as conn:
            row = conn.execute(
                "SELECT data FROM secagg_sessions"
                " WHERE run_id = ? AND purpose = ? AND round = ? AND attempt = ?",
                (run_id, purpose, int(round), int(attempt)),
            ).fetchone()
        if row is None:
            return None
        blob = bytes(row[0])
        return blob if self._sealer is None else self._sealer.open(blob, _session_row(key))

    def claim(self, session: str) -> bool:
        """Record that `session` was advertised here; False if it ever was before (forever:
        the log outlives the run, so a session id can never be re-advertised)."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO secagg_session_log (session, advertised) VALUES (?, ?)",
                (session, time.time()),
            )
        return cursor.rowcount == 1

    def claim_and_save(self, session: str, key: SessionKey, data: bytes) -> bool:
        """`claim` and, only if the claim is new, `save`, in one transaction: one durable commit
        before the advertisement leaves instead of two. False (nothing saved) if `session` was
        ever advertised here."""
        with self._transaction():
            if not self.claim(session):
                return False
            self.save(key, data)
        return True

    def drop_run(self, run_id: str) -> None:
        """Forget a finished run's session states (they hold key material no longer needed);
        the session log stays."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM secagg_sessions WHERE run_id = ?", (run_id,))


def _release_row(run_id: str, purpose: str, round: int) -> str:
    """The associated data of a sealed release: it opens only in its own row."""
    return f"release_cache/{run_id}/{purpose}/{int(round)}"


def _session_row(key: SessionKey) -> str:
    run_id, purpose, round, attempt = key
    return f"secagg_sessions/{run_id}/{purpose}/{int(round)}/{int(attempt)}"
