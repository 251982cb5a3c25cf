"""A scope's releases (one run's, or the site's whole lifetime) kept composed as the ledger grows.

Why: the ledger recomputes ε from its rows, never from a running total, so that it always equals
what an independent accountant gets from the logged mechanisms. Done naively, every charge and
every reported figure re-read and re-grouped every row the site ever released: O(rows) a charge,
growing with each run for the hospital's whole life (about 8 ms a charge at 3 000 rows, several
times a round in distributed mode). Composition is commutative and n steps of one mechanism are
one entry of n steps, which `accounting.epsilon_of` does first anyway; so a scope is kept here as
its merged entries per view and partition, extended by each new row in O(1), and ε is computed
from the merged entries: O(distinct mechanisms), the same figure.

The same figure exactly for the RDP accountant (and every history with a Skellam release): it
merges by the same key, in the same first-seen order, to the same step counts. For the PLD it is
the same composition; full-batch Gaussian entries are merged by adding n/σ² per merged entry
rather than per row, a difference in the last bits (~1e-15 relative). The PRV accountant is not
merged (`exact` turns False): the ledger then composes that scope from its rows as before.
"""

from __future__ import annotations

import functools
import sqlite3
from dataclasses import dataclass, replace
from typing import Any, Literal

from site_agent.accounting import AccountantKind, Entry, MergeKey, epsilon_of, merge_key

Partition = Literal["train", "holdout", "both"]
#: The disjoint partitions ε is the max over; a 'both' release belongs to each one's history.
PARTITIONS: tuple[Literal["train", "holdout"], ...] = ("train", "holdout")
RELEASE_PARTITIONS: tuple[Partition, ...] = ("train", "holdout", "both")
View = Literal["assumed", "own"]
VIEWS: tuple[View, ...] = ("assumed", "own")

ROW_QUERY = (
    "SELECT run_id, partition, accountant, noise_multiplier, sample_rate, steps, mechanism,"
    " l2_sensitivity, l1_sensitivity, own_noise_multiplier FROM ledger_releases"
)


@dataclass(frozen=True)
class Row:
    """One recorded release as the accountant sees it: both views, and the accountant it names."""

    run_id: str
    partition: str
    kind: AccountantKind
    assumed: Entry
    own: Entry

    def entry(self, view: View) -> Entry:
        return self.assumed if view == "assumed" else self.own


@functools.lru_cache(maxsize=8192)  # a pure function of the record: rows are read per task
def row_of(record: tuple[Any, ...]) -> Row:
    """A `ROW_QUERY` record as a Row."""
    run_id, partition, kind, sigma, q, steps, mechanism, l2, l1, own = record
    assumed = Entry(sigma, q, steps, mechanism, l2, l1)
    own_entry = assumed if own is None else replace(assumed, noise_multiplier=own)
    return Row(run_id, partition, kind, assumed, own_entry)


def epsilon_of_rows(rows: list[Row], view: View, delta: float) -> float:
    """ε of ``rows`` in one view, composed from every row.

    Partitions compose in parallel: the largest partition ε, where a 'both' release was
    computed on every row, so it is in each partition's history. Each history is composed with
    the accountant its rows name (a run's rows all name its plan's, so the run is charged as it
    was calibrated); rows naming several (runs of different plans) take the smallest of their
    figures, which is sound since each accountant bounds the whole history on its own.
    """
    kinds = sorted({r.kind for r in rows})
    if not kinds:
        return 0.0
    return max(
        min(
            epsilon_of([r.entry(view) for r in rows if r.partition in (p, "both")], delta, kind)
            for kind in kinds
        )
        for p in PARTITIONS
    )


def table_version(conn: sqlite3.Connection) -> tuple[Any, ...]:
    """What names the releases table's content: rows are only inserted, ids never reused."""
    return tuple(conn.execute("SELECT MAX(id), COUNT(*) FROM ledger_releases").fetchone())


def scope_rows(conn: sqlite3.Connection, run_id: str | None) -> list[Row]:
    """The run's (None: every) recorded release, oldest first."""
    query, args = ROW_QUERY, tuple[str, ...]()
    if run_id is not None:
        query, args = query + " WHERE run_id = ?", (run_id,)
    return [row_of(record) for record in conn.execute(query + " ORDER BY id", args)]


def compose_rows(conn: sqlite3.Connection, run_id: str | None) -> ComposedScope:
    """The run's (None: every) recorded release, composed."""
    scope = ComposedScope()
    for row in scope_rows(conn, run_id):
        scope.add_row(row)
    return scope


UNMERGED_KINDS = frozenset({"prv"})


class ComposedScope:
    """One scope's releases merged per (view, partition), and the accountants its rows name.

    A release on the partition 'both' joins every partition's history, as in the ledger."""

    def __init__(self) -> None:
        self.kinds: set[str] = set()
        self.exact = True
        self._merged: dict[tuple[str, str], dict[MergeKey, Entry]] = {
            (view, p): {} for view in VIEWS for p in PARTITIONS
        }

    def copy(self) -> ComposedScope:
        """An independent copy: a charge extends a copy, kept only once its row is committed."""
        other = ComposedScope()
        other.kinds = set(self.kinds)
        other.exact = self.exact
        other._merged = {key: dict(merged) for key, merged in self._merged.items()}
        return other

    def add_row(self, row: Row) -> None:
        """One more recorded (or about to be recorded) release."""
        self.kinds.add(row.kind)
        if row.kind in UNMERGED_KINDS:
            self.exact = False
        for p in PARTITIONS:
            if row.partition not in (p, "both"):
                continue
            for view in VIEWS:
                merged = self._merged[view, p]
                entry = row.entry(view)
                key = merge_key(entry)
                known = merged.get(key)
                merged[key] = (
                    entry if known is None else replace(known, steps=known.steps + entry.steps)
                )

    def epsilon(self, view: View, delta: float) -> float:
        """ε of this scope in ``view``: the max over partitions of the smallest figure of the
        accountants its rows name (`epsilon_of_rows`'s rule). Only if `exact`."""
        if not self.exact:
            raise ValueError("a scope with PRV-accounted rows is composed from its rows")
        if not self.kinds:
            return 0.0
        return max(
            min(
                _epsilon_of_merged(tuple(self._merged[view, p].values()), delta, kind)
                for kind in sorted(self.kinds)
            )
            for p in PARTITIONS
        )


@functools.lru_cache(maxsize=256)
def _epsilon_of_merged(entries: tuple[Entry, ...], delta: float, kind: str) -> float:
    """`epsilon_of` of merged entries, remembered: a run's scope and the lifetime's are the
    same entries until a second run, and a partition with nothing new composes the same."""
    return epsilon_of(list(entries), delta, kind)  # type: ignore[arg-type]
