"""Records of processing (GDPR Art. 30) and the erasure list, in the site's SQLite file.

One record per run the site accepted: the plan hash and name, its purpose and the lawful basis
the site's policy records for it, the features, the cohort size, ε and δ (updated as the run
spends), the coordinator's identity (from Hello), dates, and a compact membership record of the
run's patients (the sorted 16-byte prefixes of their pseudonyms) so that erasure and subject
access can say which runs used a patient. No raw patient id is ever stored: the erasure list
holds pseudonyms (site_agent.pseudonyms). Records are kept for the life of the site's privacy
ledger (its ε composes over every run); retention purges run state, never these (docs/gdpr.md).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from federation.plan import RunPlan
from site_agent.sqlite_state import SqliteComponent

MEMBER_BYTES = 16
UNKNOWN_COORDINATOR = "unknown (no Hello yet)"
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS processing_records (
        run_id        TEXT PRIMARY KEY,
        plan_sha256   TEXT    NOT NULL,
        plan_name     TEXT    NOT NULL,
        purpose       TEXT    NOT NULL,
        lawful_basis  TEXT    NOT NULL,
        features      TEXT    NOT NULL,
        cohort_size   INTEGER NOT NULL,
        training_rows INTEGER NOT NULL,
        membership    BLOB,
        epsilon       REAL    NOT NULL DEFAULT 0,
        delta         REAL    NOT NULL,
        coordinator   TEXT    NOT NULL,
        accepted_at   REAL    NOT NULL,
        last_activity REAL    NOT NULL,
        finished_at   REAL,
        state         TEXT    NOT NULL DEFAULT 'accepted',
        purged_at     REAL
    )""",
    """CREATE TABLE IF NOT EXISTS erasures (
        pseudonym TEXT PRIMARY KEY,
        erased_at REAL NOT NULL,
        reason    TEXT NOT NULL
    )""",
)
_COLUMNS = (
    "run_id, plan_sha256, plan_name, purpose, lawful_basis, features, cohort_size,"
    " training_rows, epsilon, delta, coordinator, accepted_at, last_activity, finished_at,"
    " state, purged_at, length(membership)"
)


def membership_blob(pseudonyms: Iterable[str]) -> bytes:
    """The sorted, de-duplicated 16-byte prefixes of the pseudonyms (128 bits: no collisions
    in any cohort), concatenated."""
    return b"".join(sorted({bytes.fromhex(p)[:MEMBER_BYTES] for p in pseudonyms}))


def _contains(blob: bytes, pseudonym: str) -> bool:
    needle = bytes.fromhex(pseudonym)[:MEMBER_BYTES]
    lo, hi = 0, len(blob) // MEMBER_BYTES
    while lo < hi:  # binary search over the sorted fixed-width entries
        mid = (lo + hi) // 2
        item = blob[mid * MEMBER_BYTES : (mid + 1) * MEMBER_BYTES]
        if item == needle:
            return True
        lo, hi = (mid + 1, hi) if item < needle else (lo, mid)
    return False


class ProcessingRecords(SqliteComponent):
    """The site's records of processing and its erasure list."""

    def __init__(self, conn_or_path: sqlite3.Connection | str | Path | SqliteComponent) -> None:
        super().__init__(conn_or_path, _SCHEMA)

    # ------------------------------------------------------------------ runs
    def record_run(
        self,
        run_id: str,
        plan: RunPlan,
        *,
        lawful_basis: str,
        cohort_size: int,
        training_rows: int,
        pseudonyms: list[str] | None,
        coordinator: str | None,
        now: float,
    ) -> None:
        """Written when the site accepts a plan (a re-offer of the run updates it, keeping the
        first acceptance date)."""
        blob = None if pseudonyms is None else membership_blob(pseudonyms)
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO processing_records (run_id, plan_sha256, plan_name, purpose,"
                " lawful_basis, features, cohort_size, training_rows, membership, delta,"
                " coordinator, accepted_at, last_activity) VALUES"
                " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET"
                " plan_sha256 = excluded.plan_sha256, plan_name = excluded.plan_name,"
                " purpose = excluded.purpose, lawful_basis = excluded.lawful_basis,"
                " features = excluded.features, cohort_size = excluded.cohort_size,"
                " training_rows = excluded.training_rows, membership = excluded.membership,"
                " delta = excluded.delta, coordinator = excluded.coordinator,"
                " last_activity = excluded.last_activity",
                (
                    run_id,
                    plan.sha256(),
                    plan.name,
                    plan.purpose,
                    lawful_basis,
                    json.dumps([f.name for f in plan.features]),
                    int(cohort_size),
                    int(training_rows),
                    blob,
                    float(plan.privacy.delta),
                    coordinator or UNKNOWN_COORDINATOR,
                    float(now),
                    float(now),
                ),
            )

    def spent(self, run_id: str, epsilon: float, now: float) -> None:
        """The run's ε after a release was charged."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE processing_records SET epsilon = ?, last_activity = ? WHERE run_id = ?",
                (float(epsilon), float(now), run_id),
            )

    def touch(self, run_id: str, now: float) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE processing_records SET last_activity = ? WHERE run_id = ?",
                (float(now), run_id),
            )

    def finished(self, run_id: str, state: str, now: float) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE processing_records SET state = ?, finished_at = ?, last_activity = ?"
                " WHERE run_id = ?",
                (state, float(now), float(now), run_id),
            )

    def purged(self, run_id: str, now: float) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE processing_records SET purged_at = ? WHERE run_id = ?",
                (float(now), run_id),
            )

    def runs(self, pseudonym: str | None = None) -> list[dict[str, Any]]:
        """Every record (oldest first) without its membership blob, or only the runs whose
        membership includes `pseudonym`."""
        with self._reading() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS}, membership FROM processing_records"
                " ORDER BY accepted_at, run_id"
            ).fetchall()
        out = []
        for row in rows:
            *fields, size, blob = row
            if pseudonym is not None and (blob is None or not _contains(blob, pseudonym)):
                continue
            names = [c.strip() for c in _COLUMNS.split(",")][:-1]
            record = dict(zip(names, fields, strict=True))
            record["features"] = json.loads(record["features"])
            record["membership_size"] = None if size is None else size // MEMBER_BYTES
            out.append(record)
        return out

    def includes(self, run_id: str, pseudonyms: Iterable[str]) -> bool:
        """Whether the run's membership holds any of `pseudonyms`."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT membership FROM processing_records WHERE run_id = ?", (run_id,)
            ).fetchone()
        if row is None or row[0] is None:
            return False
        return any(_contains(row[0], p) for p in pseudonyms)

    # ------------------------------------------------------------------ erasure
    def erase(self, pseudonym: str, reason: str, now: float) -> bool:
        """Put the pseudonym on the erasure list; False if it already was (nothing changes)."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO erasures (pseudonym, erased_at, reason) VALUES (?, ?, ?)",
                (pseudonym, float(now), reason),
            )
        return cursor.rowcount == 1

    def erased(self) -> frozenset[str]:
        with self._reading() as conn:
            return frozenset(r[0] for r in conn.execute("SELECT pseudonym FROM erasures"))

    def erasure(self, pseudonym: str) -> dict[str, Any] | None:
        with self._reading() as conn:
            row = conn.execute(
                "SELECT erased_at, reason FROM erasures WHERE pseudonym = ?", (pseudonym,)
            ).fetchone()
        return None if row is None else {"erased_at": row[0], "reason": row[1]}
