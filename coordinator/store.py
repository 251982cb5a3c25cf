"""The coordinator's durable state: one SQLite file (WAL): sites, runs, vectors, audit log.

Every engine change is saved in one transaction together with its audit entries, so a coordinator
killed at any instant restarts from a consistent state: either the change and its audit record are
both there, or neither is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.run_rows import RunRows
from coordinator.store_rows import SCHEMA, Aggregate, RunRow, SiteRow
from coordinator.wal import WalCommits
from federation.audit import AuditLog
from federation.fsmodes import prepare_private_sqlite


class CoordinatorStore:
    """SQLite-backed state, so a killed coordinator restarts where it stopped. Not
    thread-safe: the coordinator uses it from its event loop only, which needs no locking."""

    def __init__(self, path: Path | str, clock: Callable[[], float]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        prepare_private_sqlite(self.path)  # 0600, and so are its -wal/-shm files
        self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        # site -> the lifetime ε last written for it (`_record_lifetime_epsilon`); a rollback
        # drops it, since it may name a figure the rollback took back
        self._lifetime: dict[str, float] = {}
        self._certificates: dict[str, str] = {}  # site -> its PEM as committed (`certificate`)
        # the sites table as last read, and its parsed policies (`sites`); None: read it again
        self._site_rows: list[tuple[Any, ...]] | None = None
        self._site_policies: dict[str, dict[str, Any]] = {}
        # liveness written by `flush_seen` since those rows were read: merged in, not re-read
        self._seen_written: dict[str, float] = {}
        self._commits = WalCommits(self._conn, self.path, on_rollback=self._forget_cached)
        self._conn.executescript(SCHEMA)
        self._runs = RunRows(self._conn)
        self._clock = clock
        # Writes coordinator.sqlite.head beside the store: on every tick that committed appends
        # (`flush`), not after each commit (see there).
        self.audit = AuditLog(self._conn, clock=clock)
        # (run, vector name) -> SHA-256 of the bytes last written, and run -> the round whose
        # global vector was last written: what lets save_run skip rewriting unchanged vectors.
        self._saved_vectors: dict[tuple[str, str], bytes] = {}
        self._saved_rounds: dict[str, int] = {}
        # site -> when its latest RPC arrived, not yet written (`touch_site`, `flush_seen`)
        self._seen: dict[str, float] = {}

    def close(self) -> None:
        """Close the database (tests and shutdown; a crash is as safe: WAL, every durable
        commit synced, losing at most a tick of liveness)."""
        with contextlib.suppress(sqlite3.Error):
            self.flush()
        self._conn.close()

    def _forget_cached(self) -> None:
        """After a rollback: what the caches hold may name what the rollback took back."""
        self._lifetime.clear()
        self._site_rows = None

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[None]:
        """One atomic unit: state change plus its audit entries, so a crash never leaves a
        change without its record or a record without its change. `durable=False` for what a
        restart does not read (`record`): synced within a tick instead (coordinator/wal.py)."""
        with self._commits.transaction(durable=durable):
            yield

    def sync(self) -> None:
        """Make every commit so far durable (coordinator/wal.py)."""
        self._commits.sync()

    # ------------------------------------------------------------------ sites
    def record_hello(
        self, site_id: str, certificate_pem: str, agent_version: str, policy: dict[str, Any]
    ) -> None:
        """Record a Hello: the certificate is kept so the *other* sites can verify this site's
        key signatures with it, and the Hello is audited in the same transaction."""
        now = self._clock()
        with self.transaction():
            self._conn.execute(
                """INSERT INTO sites (site_id, certificate_pem, agent_version, policy_json,
                                      first_seen, last_seen)
                   VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT(site_id) DO UPDATE SET certificate_pem = excluded.certificate_pem,
                       agent_version = excluded.agent_version, policy_json = excluded.policy_json,
                       last_seen = excluded.last_seen""",
                (site_id, certificate_pem, agent_version, json.dumps(policy), now, now),
            )
            self.audit.append(f"site:{site_id}", "hello", {"agent_version": agent_version})
        self._lifetime.pop(site_id, None)  # the Hello's policy replaced the figure written
        self._site_rows = None
        self._certificates[site_id] = certificate_pem

    def touch_site(self, site_id: str) -> None:
        """Note that a site is alive (every RPC): operators see who is offline. Kept in memory
        and written by `flush_seen` (every tick), not committed per RPC: liveness needs no
        durability, and a commit per poll and push was a synchronous disk write each, the
        largest per-site cost of the store at a hundred sites. Not audited, or every long-poll
        would grow the log."""
        self._seen[site_id] = self._clock()

    def flush(self) -> None:
        """What is kept for the next tick: liveness, and the audit head file. The head file is
        a copy of the committed chain's head for operators to ship elsewhere; writing it
        atomically (write, fsync, rename) after every commit was half of a result's cost at a
        hundred sites. Written once per tick instead (and at close), it lags the chain by at
        most a tick, which verification accepts: a shipped head must be *in* the chain, whose
        later entries the database alone proves (federation/audit.py, "Limits")."""
        self.flush_seen()
        self.sync()
        self.audit.flush_head()

    def flush_seen(self) -> None:
        """Write the liveness `touch_site` noted since the last flush, in one transaction."""
        if not self._seen:
            return
        seen, self._seen = self._seen, {}
        self._seen_written.update(seen)  # the cached rows stay: only their last_seen moved
        with self.transaction(durable=False):  # `flush` syncs right after
            self._conn.executemany(
                "UPDATE sites SET last_seen = MAX(last_seen, ?) WHERE site_id = ?",
                [(ts, site) for site, ts in seen.items()],
            )

    def _record_lifetime_epsilon(self, site_id: str, epsilon: float) -> None:
        """Overwrite the lifetime ε of a site's stored policy with the figure its latest result
        reported. The policy otherwise comes from Hello only, so without this `fedctl sites`
        would show the budget as it stood when the agent connected, however much it has spent
        since. The latest report wins (not the largest): a site answers one task at a time, so
        its latest report is its ledger as it stands now."""
        if self._lifetime.get(site_id) == float(epsilon):
            return  # every stage of a session reports the same figure: nothing to rewrite
        row = self._conn.execute(
            "SELECT policy_json FROM sites WHERE site_id = ?", (site_id,)
        ).fetchone()
        if row is None:
            return
        policy = json.loads(row[0])
        policy["lifetime_epsilon_spent"] = float(epsilon)
        self._conn.execute(
            "UPDATE sites SET policy_json = ? WHERE site_id = ?", (json.dumps(policy), site_id)
        )
        self._lifetime[site_id] = float(epsilon)
        if self._site_rows is not None:  # the cached rows stay: only this policy changed
            self._site_policies[site_id] = policy

    def sites(self) -> list[SiteRow]:
        """Every site ever seen, by id: the run candidates and ListSites. Read and parsed again
        only when a Hello or a rollback changed the table: an operator's status view asks every
        half second (and `watch` on every change), and re-parsing a hundred policies each time
        the tick wrote liveness or a result its lifetime ε was most of a busy round's GetRun."""
        if self._site_rows is None:
            self._site_rows = self._conn.execute(
                "SELECT site_id, certificate_pem, agent_version, policy_json, first_seen, "
                "last_seen FROM sites ORDER BY site_id"
            ).fetchall()
            self._site_policies = {r[0]: json.loads(r[3]) for r in self._site_rows}
            self._seen_written = {}
        written, seen = self._seen_written, self._seen
        return [
            SiteRow(
                r[0],
                r[1],
                r[2],
                dict(self._site_policies[r[0]]),
                r[4],
                max(r[5], written.get(r[0], 0.0), seen.get(r[0], 0.0)),
            )
            for r in self._site_rows
        ]

    def certificate(self, site_id: str) -> str | None:
        """A site's PEM certificate, for the participant list of a secagg session (kept in
        memory after the first read: a session names n participants in each of n tasks)."""
        known = self._certificates.get(site_id)
        if known is not None:
            return known
        row = self._conn.execute(
            "SELECT certificate_pem FROM sites WHERE site_id = ?", (site_id,)
        ).fetchone()
        if row is None:
            return None
        self._certificates[site_id] = str(row[0])
        return str(row[0])

    # ------------------------------------------------------------------ runs
    def save_run(
        self,
        state: dict[str, Any],
        vectors: dict[str, np.ndarray],
        *,
        submitted_by: str = "",
        global_round: int | None = None,
        audit: Sequence[tuple[str, str, dict[str, Any]]] = (),
        aggregates: Sequence[Aggregate] = (),
        lifetime_epsilon: Mapping[str, float] | None = None,
        durable: bool = True,
    ) -> None:
        """Persist an engine snapshot (and any audit entries) atomically, waiting for the disk
        unless `durable` is False (then synced within the tick, coordinator/wal.py: a killed
        process loses none of it, a power loss at most the last tick). A result that changed
        nothing a restart reads is saved with `record` instead.

        `lifetime_epsilon` ({site: ε}) is what the result being saved reported as the site's
        lifetime spend: written to its sites row in the same transaction, so the figure
        operators see never runs ahead of (or behind) the result that carried it.

        A vector is rewritten only when its bytes differ from the ones last written (compared
        by SHA-256, never by object identity: an array updated in place is still the same
        object), so a d = 1e6 run does not rewrite 4 MB on every site result. The global vector
        is also kept per round: written again whenever `global_round` moves, even unchanged.
        """
        run_id = state["run_id"]
        try:
            with self.transaction(durable=durable):
                run_committed = self._runs.write(run_id, self._clock(), state, submitted_by)
                vectors_committed = self._write_vectors(run_id, vectors, global_round)
                for purpose, round_, attempt, survivors, total in aggregates:
                    self._conn.execute(
                        "INSERT OR REPLACE INTO aggregates VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            run_id,
                            purpose,
                            round_,
                            attempt,
                            json.dumps(survivors),
                            np.ascontiguousarray(total, dtype="<u4").tobytes(),
                        ),
                    )
                for site_id, epsilon in (lifetime_epsilon or {}).items():
                    self._record_lifetime_epsilon(site_id, epsilon)
                for actor, action, detail in audit:
                    self.audit.append(actor, action, detail)
        except BaseException:
            self._runs.forget(run_id)  # what it wrote is unknown: rewrite it whole next time
            raise
        # only once committed: after a rollback the next save writes them again
        run_committed()
        vectors_committed()

    def _write_vectors(
        self, run_id: str, vectors: dict[str, np.ndarray], global_round: int | None
    ) -> Callable[[], None]:
        """Write the vectors whose bytes changed (and the round's global vector) inside the
        caller's transaction; returns what to call once it committed (`save_run`)."""
        written: list[tuple[tuple[str, str], bytes]] = []
        round_written: int | None = None
        for name, vector in vectors.items():
            key = (run_id, name)
            array = np.ascontiguousarray(vector, dtype="<f4")
            digest = hashlib.sha256(array.data).digest()  # the buffer, not a copy
            changed = self._saved_vectors.get(key) != digest
            new_round = (
                name == "global_vector"
                and global_round is not None
                and (changed or self._saved_rounds.get(run_id) != global_round)
            )
            if not (changed or new_round):
                continue
            blob = array.tobytes()
            if changed:
                self._conn.execute(
                    "INSERT OR REPLACE INTO run_vectors (run_id, name, data) VALUES (?, ?, ?)",
                    (run_id, name, blob),
                )
                written.append((key, digest))
            if new_round:
                self._conn.execute(
                    "INSERT OR REPLACE INTO round_vectors (run_id, round, data) VALUES (?, ?, ?)",
                    (run_id, global_round, blob),
                )
                round_written = global_round

        def committed() -> None:
            self._saved_vectors.update(written)
            if round_written is not None:
                self._saved_rounds[run_id] = round_written

        return committed

    def record(
        self,
        *,
        audit: Sequence[tuple[str, str, dict[str, Any]]] = (),
        lifetime_epsilon: Mapping[str, float] | None = None,
    ) -> None:
        """Audit entries (and reported lifetime ε) of a result that changed nothing a restart
        reads (`snapshot.restart_key`): a result inside a secure-aggregation session. Committed
        lazily (`transaction(durable=False)`): a killed process loses none of it, a power loss
        at most the last tick's, and only of a session the restart discards anyway; so a
        hundred sites' answers per stage cost no disk wait each."""
        with self.transaction(durable=False):
            for site_id, epsilon in (lifetime_epsilon or {}).items():
                self._record_lifetime_epsilon(site_id, epsilon)
            for actor, action, detail in audit:
                self.audit.append(actor, action, detail)

    def runs(self, limit: int = 0, *, state: bool = True) -> list[RunRow]:
        """Runs, newest first (`limit` 0: all): what a restart resumes and ListRuns shows
        (`state=False`: without their snapshots, `RunRows.run`)."""
        return self._runs.runs(limit, state=state)

    def run(self, run_id: str, *, state: bool = True) -> RunRow | None:
        """One run's row, for a finished run's status and submission times; `state=False`
        leaves out its snapshot (`RunRows.run`)."""
        return self._runs.run(run_id, state=state)

    def run_vectors(self, run_id: str) -> dict[str, np.ndarray]:
        """A run's named float32 vectors (global model, optimiser moments), for restoring it."""
        rows = self._conn.execute(
            "SELECT name, data FROM run_vectors WHERE run_id = ?", (run_id,)
        ).fetchall()
        return {name: np.frombuffer(data, dtype="<f4").copy() for name, data in rows}

    def round_vector(self, run_id: str, round_: int | None = None) -> tuple[int, np.ndarray] | None:
        """The global vector after `round_` (the latest round when None): an operator may
        export any round's model, not only the last (say, the one with the best metrics)."""
        if round_ is None:
            row = self._conn.execute(
                "SELECT round, data FROM round_vectors WHERE run_id = ? "
                "ORDER BY round DESC LIMIT 1",
                (run_id,),
            ).fetchone()
        else:
            row = self._conn.execute(
                "SELECT round, data FROM round_vectors WHERE run_id = ? AND round = ?",
                (run_id, round_),
            ).fetchone()
        if row is None:
            return None
        return int(row[0]), np.frombuffer(row[1], dtype="<f4").copy()

    def aggregates(self, run_id: str) -> list[Aggregate]:
        """Every decoded secure sum of a run: (purpose, round, attempt, survivors, uint32 total).

        This is exactly what the coordinator learns — the sum over the survivors — kept so an
        auditor (or a test) can check it against what the sites say they contributed.
        """
        rows = self._conn.execute(
            "SELECT purpose, round, attempt, survivors_json, total FROM aggregates "
            "WHERE run_id = ? ORDER BY round, attempt",
            (run_id,),
        ).fetchall()
        return [
            (r[0], int(r[1]), int(r[2]), json.loads(r[3]), np.frombuffer(r[4], dtype="<u4").copy())
            for r in rows
        ]
