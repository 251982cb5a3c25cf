"""The ledger's two views of ε (assumed, own), Skellam releases, the 'both' partition, the PLD
accountant, and the in-place migration of a ledger written before any of them existed."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from site_agent.accounting import AccountingError, Entry, epsilon_of
from site_agent.ledger import BudgetExceeded, PrivacyLedger, View

pytestmark = pytest.mark.unit

DELTA = 1e-5
SK: dict[str, Any] = {
    "mechanism": "skellam",
    "l2_sensitivity": 40.0,
    "l1_sensitivity": 40.0 * math.sqrt(1000),
}


def ledger(path: Path, accountant: str = "rdp") -> PrivacyLedger:
    return PrivacyLedger(path / "site.sqlite", clock=lambda: 1000.0, accountant=accountant)  # type: ignore[arg-type]


def charge(
    book: PrivacyLedger,
    sigma: float,
    q: float,
    steps: int,
    *,
    run_id: str = "run-1",
    partition: str = "train",
    run_cap: float = 1000.0,
    lifetime_cap: float = 1000.0,
    **extra: Any,
) -> Any:
    return book.charge(
        run_id=run_id,
        purpose="update",
        round=0,
        attempt=0,
        partition=partition,  # type: ignore[arg-type]
        noise_multiplier=sigma,
        sample_rate=q,
        steps=steps,
        delta=DELTA,
        run_epsilon_cap=run_cap,
        lifetime_epsilon_cap=lifetime_cap,
        **extra,
    )


def recomputed(
    rows: list[dict[str, Any]], view: str, kind: str | None = None, run_id: str | None = None
) -> float:
    """ε from the rows alone: each view's entries, 'both' in both partitions, max over them;
    composed by ``kind``, or by the smallest figure of the accountants the rows name."""

    def entry(r: dict[str, Any]) -> Entry:
        own = r["own_noise_multiplier"]
        sigma = own if view == "own" and own is not None else r["noise_multiplier"]
        return Entry(
            sigma,
            r["sample_rate"],
            r["steps"],
            r["mechanism"],
            r["l2_sensitivity"],
            r["l1_sensitivity"],
        )

    chosen = [r for r in rows if run_id is None or r["run_id"] == run_id]
    kinds = [kind] if kind is not None else sorted({r["accountant"] for r in chosen})
    return max(
        min(
            epsilon_of([entry(r) for r in chosen if r["partition"] in (p, "both")], DELTA, k)  # type: ignore[arg-type]
            for k in kinds
        )
        for p in ("train", "holdout")
    )


def test_both_views_are_recorded_and_recompute_from_the_rows(tmp_path: Path) -> None:
    book = ledger(tmp_path)
    charges = [
        charge(book, 4.0, 1.0, 1, own_noise_multiplier=4.0 / math.sqrt(3), **SK),  # stats
        charge(book, 1.2, 0.05, 50, own_noise_multiplier=0.7, **SK),  # training
        charge(book, 1.2, 0.05, 50, own_noise_multiplier=0.7, **SK),
        charge(book, 6.0, 1.0, 1, partition="holdout"),  # central-mode metrics: one view
        charge(book, 1.5, 0.05, 30, run_id="run-2", own_noise_multiplier=1.0, **SK),
    ]
    rows = book.releases()
    assert [r["mechanism"] for r in rows] == ["skellam"] * 3 + ["gaussian", "skellam"]
    assert rows[3]["own_noise_multiplier"] is None and rows[3]["l2_sensitivity"] is None
    for i, (c, r) in enumerate(zip(charges, rows, strict=True)):
        prefix = rows[: i + 1]
        for view, run_col, life_col, run_eps, life_eps in (
            ("assumed", "epsilon_run", "epsilon_lifetime", c.epsilon_run, c.epsilon_lifetime),
            (
                "own",
                "epsilon_run_own",
                "epsilon_lifetime_own",
                c.epsilon_run_own,
                c.epsilon_lifetime_own,
            ),
        ):
            assert run_eps == pytest.approx(recomputed(prefix, view, run_id=r["run_id"]), rel=1e-6)
            assert life_eps == pytest.approx(recomputed(prefix, view), rel=1e-6)
            assert (r[run_col], r[life_col]) == (run_eps, life_eps)
    views: tuple[View, ...] = ("assumed", "own")
    for view in views:
        assert book.epsilon_run("run-1", DELTA, view) == pytest.approx(
            recomputed(rows, view, run_id="run-1"), rel=1e-6
        )
        assert book.epsilon_lifetime(DELTA, view) == pytest.approx(recomputed(rows, view), rel=1e-6)
    # The worst case is worse; the default view is the assumed one (what callers always saw).
    assert book.epsilon_lifetime(DELTA, "own") > book.epsilon_lifetime(DELTA)
    assert book.epsilon_lifetime(DELTA) == book.epsilon_lifetime(DELTA, "assumed")
    assert book.history("run-1", view="own")[1].noise_multiplier == 0.7


def test_gaussian_releases_without_own_noise_have_one_view(tmp_path: Path) -> None:
    book = ledger(tmp_path)
    c = charge(book, 1.1, 0.05, 200)
    assert (c.epsilon_run, c.epsilon_lifetime) == (c.epsilon_run_own, c.epsilon_lifetime_own)
    assert book.epsilon_run("run-1", DELTA, "own") == book.epsilon_run("run-1", DELTA)


def test_a_cap_on_the_own_view_refuses_what_the_assumed_view_allows(tmp_path: Path) -> None:
    book = ledger(tmp_path)
    charge(book, 1.2, 0.05, 50, own_noise_multiplier=0.7, **SK)
    rows = book.releases()
    next_row = {**rows[0], "id": 2}
    assumed = recomputed([*rows, next_row], "assumed")
    own = recomputed([*rows, next_row], "own")
    assert assumed < own
    cap = (assumed + own) / 2
    for scope in ("run", "lifetime"):
        caps: dict[str, Any] = {"run_cap": cap} if scope == "run" else {"lifetime_cap": cap}
        with pytest.raises(BudgetExceeded, match="own view") as refused:
            charge(book, 1.2, 0.05, 50, own_noise_multiplier=0.7, budget_view="own", **caps, **SK)
        assert f"{scope} limit" in str(refused.value)
        assert len(book.releases()) == 1  # nothing recorded
    accepted = charge(book, 1.2, 0.05, 50, own_noise_multiplier=0.7, run_cap=cap, **SK)
    assert accepted.epsilon_run == pytest.approx(assumed, rel=1e-6)
    assert accepted.epsilon_run_own == pytest.approx(own, rel=1e-6)  # recorded, not capped
    with pytest.raises(BudgetExceeded, match="assumed view"):  # the default view binds too
        tight = accepted.epsilon_run * 1.0001
        charge(book, 1.2, 0.05, 50, own_noise_multiplier=0.7, run_cap=tight, **SK)


def test_a_both_release_counts_in_both_partitions(tmp_path: Path) -> None:
    book = ledger(tmp_path)
    train, holdout, both = Entry(1.1, 0.05, 200), Entry(2.0, 1.0, 1), Entry(3.0, 1.0, 1)
    charge(book, train.noise_multiplier, train.sample_rate, train.steps, partition="train")
    charge(book, holdout.noise_multiplier, 1.0, 1, partition="holdout")
    charge(book, both.noise_multiplier, 1.0, 1, partition="both")
    expected = max(epsilon_of([train, both], DELTA), epsilon_of([holdout, both], DELTA))
    assert expected > epsilon_of([train], DELTA)
    assert book.epsilon_run("run-1", DELTA) == pytest.approx(expected)
    assert book.epsilon_lifetime(DELTA) == pytest.approx(expected)
    assert book.history(partition="train") == [train, both]
    assert book.history(partition="holdout") == [holdout, both]
    assert book.history(partition="both") == [both]
    # A small site charging everything on 'both' is capped like one partition.
    cap = epsilon_of([both, both], DELTA) * 0.99
    charge(book, both.noise_multiplier, 1.0, 1, run_id="run-2", partition="both", run_cap=cap)
    with pytest.raises(BudgetExceeded):
        charge(book, both.noise_multiplier, 1.0, 1, run_id="run-2", partition="both", run_cap=cap)
    assert book.history("run-2") == [both]


@pytest.mark.parametrize("accountant", ["pld", "prv"])
def test_a_ledger_of_another_accountant_uses_it_for_every_figure(
    tmp_path: Path, accountant: str
) -> None:
    book = ledger(tmp_path, accountant)
    first = charge(book, 3.0, 1.0, 1)
    second = charge(book, 1.1, 0.05, 200, partition="both")
    rows = book.releases()
    assert {r["accountant"] for r in rows} == {accountant}
    assert first.epsilon_run == pytest.approx(recomputed(rows[:1], "assumed", accountant), rel=1e-9)
    assert second.epsilon_run == pytest.approx(recomputed(rows, "assumed", accountant), rel=1e-9)
    assert second.epsilon_run < recomputed(rows, "assumed", "rdp")
    book.close()
    reopened = ledger(tmp_path, accountant)
    assert reopened.epsilon_lifetime(DELTA) == second.epsilon_lifetime


def test_each_row_is_composed_by_the_accountant_it_names(tmp_path: Path) -> None:
    """A run is charged with its plan's accountant (as its σ was calibrated), whatever the
    ledger's default; a lifetime of runs naming different ones takes the smallest figure."""
    book = ledger(tmp_path)  # default 'rdp'
    first = charge(book, 3.0, 1.0, 1, accountant="pld")
    pld_run = charge(book, 1.1, 0.05, 200, accountant="pld")
    rows = book.releases()
    assert [r["accountant"] for r in rows] == ["pld", "pld"]
    assert first.epsilon_run == pytest.approx(recomputed(rows[:1], "assumed", "pld"), rel=1e-9)
    assert pld_run.epsilon_run == pytest.approx(recomputed(rows, "assumed", "pld"), rel=1e-9)
    assert pld_run.epsilon_run < recomputed(rows, "assumed", "rdp")
    rdp_run = charge(book, 1.1, 0.05, 200, run_id="run-2", partition="holdout")
    rows = book.releases()
    assert rows[-1]["accountant"] == "rdp"
    assert rdp_run.epsilon_run == pytest.approx(recomputed(rows[-1:], "assumed", "rdp"), rel=1e-9)
    mixed = recomputed(rows, "assumed")
    assert mixed == min(recomputed(rows, "assumed", "pld"), recomputed(rows, "assumed", "rdp"))
    assert rdp_run.epsilon_lifetime == pytest.approx(mixed, rel=1e-9)
    book.close()
    reopened = ledger(tmp_path, "prv")  # another default changes no recorded figure
    assert reopened.epsilon_run("run-1", DELTA) == pytest.approx(pld_run.epsilon_run, rel=1e-9)
    assert reopened.epsilon_lifetime(DELTA) == pytest.approx(mixed, rel=1e-9)
    with pytest.raises(ValueError, match="accountant"):
        charge(reopened, 1.0, 1.0, 1, accountant="gdp")


def test_a_pld_ledger_with_a_skellam_release_reports_rdp(tmp_path: Path) -> None:
    book = ledger(tmp_path, "pld")
    charge(book, 1.1, 0.05, 200)
    with_skellam = charge(book, 1.1, 0.05, 10, **SK)
    rows = book.releases()
    assert with_skellam.epsilon_run == pytest.approx(recomputed(rows, "assumed", "rdp"), rel=1e-9)


def test_figures_survive_a_restart(tmp_path: Path) -> None:
    book = ledger(tmp_path)
    charge(book, 1.2, 0.05, 50, own_noise_multiplier=0.7, **SK)
    charge(book, 5.0, 1.0, 1, partition="both", own_noise_multiplier=3.0, **SK)
    before = {
        view: (book.epsilon_run("run-1", DELTA, view), book.epsilon_lifetime(DELTA, view))
        for view in ("assumed", "own")
    }
    rows = book.releases()
    book.close()
    reopened = ledger(tmp_path)
    assert reopened.releases() == rows
    for view, figures in before.items():
        assert (
            reopened.epsilon_run("run-1", DELTA, view),  # type: ignore[arg-type]
            reopened.epsilon_lifetime(DELTA, view),  # type: ignore[arg-type]
        ) == figures


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"own_noise_multiplier": 1.3}, ValueError),  # more than the whole noise
        ({"own_noise_multiplier": -0.1}, ValueError),
        ({"budget_view": "median"}, ValueError),
        ({"mechanism": "skellam"}, AccountingError),  # no sensitivities
        ({"l2_sensitivity": 3.0}, AccountingError),  # a Gaussian takes none
    ],
)
def test_bad_charges_record_nothing(tmp_path: Path, extra: dict[str, Any], error: type) -> None:
    book = ledger(tmp_path)
    with pytest.raises(error):
        charge(book, 1.2, 0.05, 50, **extra)
    assert book.releases() == []


# ------------------------------------------------------------------------------- migration
_OLD_DDL = """CREATE TABLE IF NOT EXISTS ledger_releases (
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
    )"""


def _old_database(path: Path) -> list[tuple[Any, ...]]:
    """A ledger file as the previous version wrote it: three releases, the last one deleted
    (so the AUTOINCREMENT sequence is ahead of the largest id), and the split fingerprint."""
    conn = sqlite3.connect(path)
    conn.execute(_OLD_DDL)
    conn.execute("CREATE INDEX IF NOT EXISTS ledger_releases_run ON ledger_releases (run_id)")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
    )
    conn.execute("INSERT INTO ledger_meta VALUES ('split_fingerprint', 'fp-1')")
    old = [
        (10.0, "run-1", "stats", 0, 0, "train", 3.0, 1.0, 1, DELTA, 0.0, 0.0, "rdp"),
        (11.0, "run-1", "update", 1, 0, "train", 1.1, 0.05, 200, DELTA, 0.0, 0.0, "rdp"),
        (12.0, "run-1", "metrics", 2, 0, "holdout", 6.0, 1.0, 1, DELTA, 0.0, 0.0, "rdp"),
        (13.0, "run-1", "update", 2, 0, "train", 1.1, 0.05, 200, DELTA, 0.0, 0.0, "rdp"),
    ]
    conn.executemany(
        "INSERT INTO ledger_releases (ts, run_id, purpose, round, attempt, partition,"
        " noise_multiplier, sample_rate, steps, delta, epsilon_run, epsilon_lifetime, accountant)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        old,
    )
    conn.execute("DELETE FROM ledger_releases WHERE id = 4")
    conn.commit()
    with pytest.raises(sqlite3.IntegrityError):  # the old CHECK: no 'both'
        conn.execute(
            "INSERT INTO ledger_releases (ts, run_id, purpose, round, attempt, partition,"
            " noise_multiplier, sample_rate, steps, delta, epsilon_run, epsilon_lifetime,"
            " accountant) VALUES (1, 'r', 'p', 0, 0, 'both', 1, 1, 1, 1e-5, 0, 0, 'rdp')"
        )
    rows = conn.execute("SELECT * FROM ledger_releases ORDER BY id").fetchall()
    conn.close()
    return rows


def test_an_old_ledger_migrates_in_place_keeping_every_row(tmp_path: Path) -> None:
    path = tmp_path / "site.sqlite"
    old_rows = _old_database(path)
    book = PrivacyLedger(path, clock=lambda: 2000.0, split_fingerprint="fp-1")  # same split
    rows = book.releases()
    assert [tuple(r.values())[:14] for r in rows] == old_rows
    for r in rows:
        assert r["mechanism"] == "gaussian"
        assert r["own_noise_multiplier"] is None and r["epsilon_run_own"] is None
    old_history = [Entry(3.0, 1.0, 1), Entry(1.1, 0.05, 200)]
    assert book.epsilon_run("run-1", DELTA) == pytest.approx(epsilon_of(old_history, DELTA))
    assert book.epsilon_lifetime(DELTA, "own") == book.epsilon_lifetime(DELTA)
    # The wider CHECK is in force, and release ids are never reused (id 4 was deleted).
    new = charge(book, 2.0, 1.0, 1, partition="both", **SK)
    assert new.release_id == 5
    with pytest.raises(sqlite3.IntegrityError):
        book._conn.execute(  # still refuses anything else
            "UPDATE ledger_releases SET partition = 'elsewhere' WHERE id = 1"
        )
    book.close()
    # Idempotent: opening the migrated file again changes nothing.
    reopened = PrivacyLedger(path, clock=lambda: 3000.0, split_fingerprint="fp-1")
    assert len(reopened.releases()) == 4
    assert reopened.releases()[-1]["partition"] == "both"
    conn = sqlite3.connect(path)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "ledger_releases_run" in names and "ledger_releases_rebuild" not in names
    conn.close()
    reopened.close()


def test_a_ledger_missing_only_the_new_columns_gains_them(tmp_path: Path) -> None:
    """ALTER TABLE ADD COLUMN alone (a table whose CHECK already admits 'both')."""
    path = tmp_path / "site.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(_OLD_DDL.replace("('train', 'holdout')", "('train', 'holdout', 'both')"))
    conn.execute(
        "INSERT INTO ledger_releases (ts, run_id, purpose, round, attempt, partition,"
        " noise_multiplier, sample_rate, steps, delta, epsilon_run, epsilon_lifetime, accountant)"
        " VALUES (1, 'run-1', 'stats', 0, 0, 'both', 3.0, 1.0, 1, 1e-5, 0.5, 0.5, 'rdp')"
    )
    conn.commit()
    conn.close()
    book = PrivacyLedger(path, clock=lambda: 2.0)
    (row,) = book.releases()
    assert row["partition"] == "both" and row["mechanism"] == "gaussian"
    assert row["epsilon_run"] == 0.5 and row["l1_sensitivity"] is None
    charge(book, 1.2, 0.05, 50, own_noise_multiplier=0.7, **SK)
    assert len(book.releases()) == 2
