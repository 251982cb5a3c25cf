"""The ledger keeps each scope composed between charges (site_agent.ledger_compose): every
figure it charges, records and reports must still be what composing its rows gives, through
other writers, refused charges and restarts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from site_agent.ledger import BudgetExceeded, PrivacyLedger
from tests.unit.site_agent.test_ledger_views import DELTA, SK, charge, ledger, recomputed

pytestmark = pytest.mark.unit

RELEASE = st.fixed_dictionaries(
    {
        "run_id": st.sampled_from(["run-1", "run-2", "run-3"]),
        "partition": st.sampled_from(["train", "train", "holdout", "both"]),
        "kind": st.sampled_from(["gaussian", "gaussian-full", "skellam"]),
        "sigma": st.sampled_from([0.9, 1.3, 4.0]),
        "steps": st.integers(1, 40),
        "writer": st.sampled_from([0, 0, 1]),  # 1: another connection to the same file
        "tight": st.booleans(),  # a cap this release may break: refused, nothing recorded
    }
)


def _charge(book: PrivacyLedger, r: dict[str, Any]) -> Any:
    extra: dict[str, Any] = {"run_id": r["run_id"], "partition": r["partition"]}
    if r["tight"]:
        extra["run_cap"] = 4.0
    if r["kind"] == "skellam":
        return charge(book, r["sigma"], 1.0, 1, own_noise_multiplier=r["sigma"] / 2, **SK, **extra)
    q = 1.0 if r["kind"] == "gaussian-full" else 0.05
    return charge(book, r["sigma"], q, r["steps"], **extra)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    releases=st.lists(RELEASE, min_size=1, max_size=12), accountant=st.sampled_from(["rdp", "pld"])
)
def test_every_figure_equals_the_composition_of_the_rows(
    tmp_path_factory: pytest.TempPathFactory, releases: list[dict[str, Any]], accountant: str
) -> None:
    folder = tmp_path_factory.mktemp("ledger")
    books = [ledger(folder, accountant), ledger(folder, accountant)]
    try:
        for r in releases:
            book = books[r["writer"]]
            before = book.releases()
            try:
                got = _charge(book, r)
            except BudgetExceeded:
                assert book.releases() == before  # refused: nothing recorded
                continue
            rows = book.releases()
            assert len(rows) == len(before) + 1
            for view, run_figure, life_figure in (
                ("assumed", got.epsilon_run, got.epsilon_lifetime),
                ("own", got.epsilon_run_own, got.epsilon_lifetime_own),
            ):
                assert math.isclose(
                    run_figure, recomputed(rows, view, run_id=r["run_id"]), rel_tol=1e-9
                )
                assert math.isclose(life_figure, recomputed(rows, view), rel_tol=1e-9)
            for other in books:  # what each connection reports, the other's rows included
                for run_id in ("run-1", "run-2", "run-3"):
                    expected = (
                        recomputed(rows, "assumed", run_id=run_id)
                        if any(row["run_id"] == run_id for row in rows)
                        else 0.0
                    )
                    assert math.isclose(other.epsilon_run(run_id, DELTA), expected, rel_tol=1e-9)
                assert math.isclose(
                    other.epsilon_lifetime(DELTA, "own"), recomputed(rows, "own"), rel_tol=1e-9
                )
    finally:
        for book in books:
            book.close()
    reopened = ledger(folder, accountant)  # a restart composes from the file alone
    try:
        rows = reopened.releases()
        assert math.isclose(
            reopened.epsilon_lifetime(DELTA),
            recomputed(rows, "assumed") if rows else 0.0,
            rel_tol=1e-9,
        )
    finally:
        reopened.close()


def test_a_charge_costs_the_same_after_thousands_of_releases(tmp_path: Path) -> None:
    """Not a timing: the number of rows a charge reads. With the scope kept composed, a charge
    reads no release row at all once the ledger has seen the table (only its version)."""
    book = ledger(tmp_path)
    for _ in range(300):
        charge(book, 20.0, 1.0, 1, own_noise_multiplier=8.0, **SK)
    read: list[str] = []
    book._conn.set_trace_callback(read.append)  # type: ignore[attr-defined]
    charge(book, 20.0, 1.0, 1, own_noise_multiplier=8.0, **SK)
    book.epsilon_run("run-1", DELTA)
    book._conn.set_trace_callback(None)  # type: ignore[attr-defined]
    full_reads = [q for q in read if "FROM ledger_releases" in q and "MAX(id)" not in q]
    assert full_reads == [], full_reads
    book.close()
