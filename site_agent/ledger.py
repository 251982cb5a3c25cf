"""The site's privacy ledger: every release is charged here, in SQLite, *before* it leaves the site.

A release is one `accounting.Entry` (σ, q, steps; for a Skellam release also its sensitivities)
tagged with the run, purpose, round, attempt and the data partition it was computed on. ε is never
stored as a running total: it is recomputed by `accounting.epsilon_of` from the recorded entries,
so the ledger survives restarts and composes across rounds and runs exactly as if one accountant
had seen the whole history. Between charges that history is kept merged per mechanism in memory
(site_agent.ledger_compose), so a charge does not re-read it.

Parallel composition. The training partition (federated statistics and DP-SGD) and the held-out
partition (evaluation metrics) are disjoint sets of patients chosen by a keyed hash of each
patient's own key, independent of every data value (site_agent.data). Adding or removing one
patient changes exactly one partition, so the site's ε is the MAX of the two partitions' ε, not
their sum. A release on partition 'both' (a small site that holds nothing out) was computed on
every patient, so it is in both partitions' histories, and the max stays a valid bound. That
holds only while the split never changes: the ledger stores the split's fingerprint and
`check_split` refuses a different one once anything has been released. docs/site-config.md
states the argument and its limits in full.

Two views of ε (PrivacyLedger): under the site's trust assumption, and from its own noise alone.

Concurrency: a charge is one IMMEDIATE transaction (read history, compute ε, insert), so two
processes or connections charging at once are serialised and can never both pass a cap. Older
databases are migrated in place when opened (`ledger_schema.migrate`), in the schema
transaction. The SQLite plumbing every state store shares (`open_state_db`,
`SqliteComponent`) is site_agent.sqlite_state; it is re-exported here for callers that import
it from the ledger.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from site_agent.accounting import ACCOUNTANT_KINDS, AccountantKind, Entry, Mechanism, epsilon_of
from site_agent.ledger_compose import PARTITIONS as PARTITIONS
from site_agent.ledger_compose import RELEASE_PARTITIONS as RELEASE_PARTITIONS
from site_agent.ledger_compose import VIEWS as VIEWS
from site_agent.ledger_compose import (
    ComposedScope,
    Row,
    compose_rows,
    epsilon_of_rows,
    scope_rows,
    table_version,
)
from site_agent.ledger_compose import Partition as Partition
from site_agent.ledger_compose import View as View
from site_agent.ledger_schema import SCHEMA, migrate
from site_agent.sqlite_state import SqliteComponent as SqliteComponent
from site_agent.sqlite_state import open_state_db as open_state_db

_SPLIT_KEY = "split_fingerprint"


class BudgetExceeded(Exception):
    """A release would take the site past a cap; nothing was recorded and nothing may be sent."""


class SplitChanged(Exception):
    """The held-out split differs from the one the recorded releases were computed on (mixing
    splits would put a patient in both partitions and void parallel composition)."""


@dataclass(frozen=True)
class Charge:
    """The site's ε (max over partitions) after the release was recorded, in both views:
    ``epsilon_run``/``epsilon_lifetime`` under the site's trust assumption (what callers always
    saw), ``*_own`` from the site's own noise alone (equal unless a release set
    own_noise_multiplier)."""

    epsilon_run: float
    epsilon_lifetime: float
    release_id: int
    epsilon_run_own: float
    epsilon_lifetime_own: float


_SCOPES_KEPT = 8


def _view(view: str) -> View:
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    return view


class PrivacyLedger(SqliteComponent):
    """Releases recorded before they leave; ε per run and over the site's lifetime, in two views.

    The *assumed* view charges each release at ``noise_multiplier``: the noise the released sum
    carries under the site's trust assumption (in distributed mode, enough honest sites add
    their Skellam shares). The *own* view charges it at ``own_noise_multiplier``: the worst case
    in which only the site's own noise protects its patients. Both are recorded on every charge;
    the caps bind the view the caller names (its policy), so a site that trusts nobody can cap
    its worst case. For a release with no own_noise_multiplier the two are the same.

    ε is recomputed from the rows with the accountant each row names (``accountant`` here is
    the default for a charge that names none; see `_epsilon`); a history with a Skellam release
    is accounted in RDP whatever the accountant (site_agent.accounting), an upper bound too.
    """

    def __init__(
        self,
        conn_or_path: sqlite3.Connection | str | Path,
        clock: Callable[[], float],
        accountant: AccountantKind = "rdp",
        *,
        split_fingerprint: str | None = None,
    ) -> None:
        if accountant not in ACCOUNTANT_KINDS:
            raise ValueError(f"accountant must be one of {ACCOUNTANT_KINDS}, got {accountant!r}")
        super().__init__(conn_or_path, SCHEMA, migrate)
        self._clock = clock
        self._kind: AccountantKind = accountant
        # (run id or None, view, δ) -> (table version, ε): `_memoised`
        self._memo: dict[tuple[str | None, View, float], tuple[tuple[Any, ...], float]] = {}
        # run id or None (the lifetime) -> (table version, its rows composed): `_composed`
        self._scopes: dict[str | None, tuple[tuple[Any, ...], ComposedScope]] = {}
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
        partition: Partition,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        delta: float,
        run_epsilon_cap: float,
        lifetime_epsilon_cap: float,
        mechanism: Mechanism = "gaussian",
        l2_sensitivity: float | None = None,
        l1_sensitivity: float | None = None,
        own_noise_multiplier: float | None = None,
        budget_view: View = "assumed",
        accountant: AccountantKind | None = None,
    ) -> Charge:
        """Record one release if the ``budget_view`` ε stays within both caps; else
        BudgetExceeded and no row. ``partition`` 'both' is a release computed on all the site's
        rows (nothing held out). ``own_noise_multiplier`` (≤ noise_multiplier; None = equal) is
        the noise the site itself added, relative to the same sensitivity. ``accountant`` (the
        run plan's; None = the ledger's) is recorded on the row and composes the run's ε."""
        if partition not in RELEASE_PARTITIONS:
            raise ValueError(f"partition must be one of {RELEASE_PARTITIONS}, got {partition!r}")
        if budget_view not in VIEWS:
            raise ValueError(f"budget_view must be one of {VIEWS}, got {budget_view!r}")
        if not run_id:
            raise ValueError("run_id must be non-empty")
        if not purpose:
            raise ValueError("purpose must be non-empty")
        for name, cap in (("run", run_epsilon_cap), ("lifetime", lifetime_epsilon_cap)):
            if not cap > 0:
                raise ValueError(f"{name} ε cap must be > 0, got {cap}")
        new = Entry(
            float(noise_multiplier),
            float(sample_rate),
            int(steps),
            mechanism,
            None if l2_sensitivity is None else float(l2_sensitivity),
            None if l1_sensitivity is None else float(l1_sensitivity),
        )
        own = None if own_noise_multiplier is None else float(own_noise_multiplier)
        # The site's share is part of the total, so it cannot exceed it (beyond the rounding of
        # σ = √μ/Δ2 that a site relying on its own noise alone gets back).
        if own is not None and not (0 <= own <= new.noise_multiplier * (1 + 1e-9)):
            raise ValueError(
                f"own_noise_multiplier must be in [0, noise_multiplier={noise_multiplier}],"
                f" got {own_noise_multiplier}"
            )
        kind = self._kind if accountant is None else accountant
        if kind not in ACCOUNTANT_KINDS:
            raise ValueError(f"accountant must be one of {ACCOUNTANT_KINDS}, got {kind!r}")
        own_entry = new if own is None else replace(new, noise_multiplier=own)
        pending = Row(run_id, partition, kind, new, own_entry)
        epsilon_of([], delta, kind)  # validates delta before taking the write lock
        with self._transaction() as conn:
            version = table_version(conn)
            scopes = [self._composed(conn, scope, version).copy() for scope in (run_id, None)]
            for scope in scopes:
                scope.add_row(pending)
            if all(scope.exact for scope in scopes):
                figures = {
                    view: (scopes[0].epsilon(view, delta), scopes[1].epsilon(view, delta))
                    for view in VIEWS
                }
            else:  # a PRV-accounted scope: composed from its rows (ledger_compose says why)
                rows = [*scope_rows(conn, None), pending]
                figures = {view: self._figures(rows, run_id, delta, view) for view in VIEWS}
            eps_run, eps_life = figures[budget_view]
            if eps_run > run_epsilon_cap:
                raise BudgetExceeded(
                    f"run {run_id}: ε ({budget_view} view) would reach {eps_run:.4g}, over the"
                    f" run limit {run_epsilon_cap:g} (a {purpose} release on the {partition}"
                    " partition)"
                )
            if eps_life > lifetime_epsilon_cap:
                raise BudgetExceeded(
                    f"lifetime ε ({budget_view} view) would reach {eps_life:.4g}, over the site's"
                    f" lifetime limit {lifetime_epsilon_cap:g} (a {purpose} release of run"
                    f" {run_id} on the {partition} partition)"
                )
            values: dict[str, Any] = {
                "ts": float(self._clock()),
                "run_id": run_id,
                "purpose": purpose,
                "round": int(round),
                "attempt": int(attempt),
                "partition": partition,
                "noise_multiplier": new.noise_multiplier,
                "sample_rate": new.sample_rate,
                "steps": new.steps,
                "delta": float(delta),
                "epsilon_run": figures["assumed"][0],
                "epsilon_lifetime": figures["assumed"][1],
                "accountant": kind,
                "mechanism": new.mechanism,
                "l2_sensitivity": new.l2_sensitivity,
                "l1_sensitivity": new.l1_sensitivity,
                "own_noise_multiplier": own,
                "epsilon_run_own": figures["own"][0],
                "epsilon_lifetime_own": figures["own"][1],
            }
            cursor = conn.execute(
                f"INSERT INTO ledger_releases ({', '.join(values)})"
                f" VALUES ({', '.join('?' * len(values))})",
                tuple(values.values()),
            )
            release_id = cursor.lastrowid
        assert release_id is not None
        # committed: the extended scopes are the table's as of this row (a guess at the new
        # version that is wrong only makes the next read compose again)
        after = (release_id, int(version[1]) + 1)
        for scope_id, scope in zip((run_id, None), scopes, strict=True):
            if scope.exact:
                self._keep(scope_id, after, scope)
        return Charge(
            epsilon_run=figures["assumed"][0],
            epsilon_lifetime=figures["assumed"][1],
            release_id=release_id,
            epsilon_run_own=figures["own"][0],
            epsilon_lifetime_own=figures["own"][1],
        )

    @staticmethod
    def _figures(rows: list[Row], run_id: str, delta: float, view: View) -> tuple[float, float]:
        """(run ε, lifetime ε) of ``rows`` in one view."""
        this_run = [r for r in rows if r.run_id == run_id]
        return epsilon_of_rows(this_run, view, delta), epsilon_of_rows(rows, view, delta)

    # ------------------------------------------------------------------ reading
    def _rows(self, run_id: str | None) -> list[Row]:
        with self._reading() as conn:
            return scope_rows(conn, run_id)

    def epsilon_run(self, run_id: str, delta: float, view: View = "assumed") -> float:
        """ε this run has spent (max over the two partitions), as every task result reports it;
        ``view`` 'own' is the worst case (the site's own noise alone)."""
        return self._memoised(run_id, _view(view), delta)

    def epsilon_lifetime(self, delta: float, view: View = "assumed") -> float:
        """ε the site has spent over all runs ever (max over the two partitions): what Hello and
        the policy's lifetime check use."""
        return self._memoised(None, _view(view), delta)

    def _memoised(self, run_id: str | None, view: View, delta: float) -> float:
        """`_epsilon` of the run's (None: every) release, recomputed only when the table changed
        (every task result reports both figures: 1.5 ms of CPU a task). Releases are only ever
        inserted, with ids never reused, so (largest id, count) names the table's content."""
        with self._reading() as conn:
            version = table_version(conn)
            hit = self._memo.get((run_id, view, delta))
            if hit is None or hit[0] != version:
                scope = self._composed(conn, run_id, version)
                if scope.exact:
                    hit = (version, scope.epsilon(view, delta))
                else:
                    hit = (version, epsilon_of_rows(self._rows(run_id), view, delta))
                self._memo[(run_id, view, delta)] = hit
        return hit[1]

    def _composed(
        self, conn: sqlite3.Connection, run_id: str | None, version: tuple[Any, ...]
    ) -> ComposedScope:
        """The run's (None: every) release composed (site_agent.ledger_compose), as of the
        table `version`: kept between charges and extended by each, composed again from the
        rows only when the table changed otherwise (another process, a rollback). Do not
        modify it: `copy()` first."""
        kept = self._scopes.get(run_id)
        if kept is not None and kept[0] == version:
            return kept[1]
        scope = compose_rows(conn, run_id)
        self._keep(run_id, version, scope)
        return scope

    def _keep(self, run_id: str | None, version: tuple[Any, ...], scope: ComposedScope) -> None:
        self._scopes.pop(run_id, None)
        self._scopes[run_id] = (version, scope)
        while len(self._scopes) > _SCOPES_KEPT:  # the lifetime and the latest runs
            oldest = next(key for key in self._scopes if key is not None)
            del self._scopes[oldest]

    def history(
        self, run_id: str | None = None, partition: str | None = None, view: View = "assumed"
    ) -> list[Entry]:
        """The recorded entries, oldest first, optionally of one run and/or one partition: a
        partition's history includes the 'both' releases; ``partition='both'`` gives only those."""
        if partition is not None and partition not in RELEASE_PARTITIONS:
            raise ValueError(f"partition must be one of {RELEASE_PARTITIONS}, got {partition!r}")
        return [
            r.entry(_view(view))
            for r in self._rows(run_id)
            if partition in (None, r.partition) or (r.partition == "both" and partition != "both")
        ]

    def releases(
        self, run_id: str | None = None, purpose: str | None = None
    ) -> list[dict[str, Any]]:
        """Every recorded release (of a run, of a purpose) as a plain dict (for audit and
        reports), oldest first. Filtered here, not by the caller: a run's statistics release is
        read every round, and a distributed run records hundreds of training rows."""
        where = [
            (column, value)
            for column, value in (("run_id", run_id), ("purpose", purpose))
            if value is not None
        ]
        query = "SELECT * FROM ledger_releases"
        if where:
            query += " WHERE " + " AND ".join(f"{column} = ?" for column, _ in where)
        args: tuple[Any, ...] = tuple(value for _, value in where)
        with self._reading() as conn:
            cursor = conn.execute(query + " ORDER BY id", args)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
