"""The privacy ledger (real SQLite): the run and lifetime caps refuse before anything is recorded,
the two partitions compose in parallel, and the split cannot change once something was released."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from site_agent.accounting import Entry, epsilon_of
from site_agent.config import DataConfig
from site_agent.ledger import BudgetExceeded, PrivacyLedger, SplitChanged
from site_agent.split import split_fingerprint

pytestmark = pytest.mark.unit

DELTA = 1e-5
STATS = Entry(3.0, 1.0, 1)  # a statistics release: σ = 3, q = 1, one step
TRAINING = Entry(1.1, 0.05, 200)  # a round of DP-SGD


def ledger(tmp_path: Path, fingerprint: str | None = None) -> PrivacyLedger:
    return PrivacyLedger(
        tmp_path / "site.sqlite", clock=lambda: 1000.0, split_fingerprint=fingerprint
    )


def charge(
    book: PrivacyLedger,
    entry: Entry,
    *,
    run_id: str = "run-1",
    partition: str = "train",
    run_cap: float = 100.0,
    lifetime_cap: float = 100.0,
    round_: int = 0,
) -> Any:
    return book.charge(
        run_id=run_id,
        purpose="update",
        round=round_,
        attempt=0,
        partition=partition,  # type: ignore[arg-type]
        noise_multiplier=entry.noise_multiplier,
        sample_rate=entry.sample_rate,
        steps=entry.steps,
        delta=DELTA,
        run_epsilon_cap=run_cap,
        lifetime_epsilon_cap=lifetime_cap,
    )


def test_epsilon_is_the_composition_of_what_was_charged(tmp_path: Path) -> None:
    book = ledger(tmp_path)
    first = charge(book, STATS)
    second = charge(book, TRAINING, round_=1)
    assert first.epsilon_run == pytest.approx(epsilon_of([STATS], DELTA))
    assert second.epsilon_run == pytest.approx(epsilon_of([STATS, TRAINING], DELTA))
    assert book.epsilon_run("run-1", DELTA) == pytest.approx(second.epsilon_run)
    assert book.history("run-1") == [STATS, TRAINING]


def test_the_run_cap_refuses_and_records_nothing(tmp_path: Path) -> None:
    book = ledger(tmp_path)
    charge(book, STATS, run_cap=3.0)
    after_one = epsilon_of([STATS, TRAINING], DELTA)
    cap = after_one * 0.99  # the training round would take the run just past its cap
    with pytest.raises(BudgetExceeded, match="over the run limit"):
        charge(book, TRAINING, run_cap=cap, round_=1)
    assert book.history("run-1") == [STATS]
    assert len(book.releases()) == 1
    # The cap is per run: another run starts from nothing.
    charge(book, TRAINING, run_id="run-2", run_cap=cap, round_=1)
    assert book.history("run-2") == [TRAINING]


def test_the_lifetime_cap_spans_runs_and_refuses_and_records_nothing(tmp_path: Path) -> None:
    book = ledger(tmp_path)
    charge(book, TRAINING, run_id="run-1")
    charge(book, TRAINING, run_id="run-2")
    lifetime = epsilon_of([TRAINING, TRAINING, TRAINING], DELTA)
    run_alone = epsilon_of([TRAINING], DELTA)
    with pytest.raises(BudgetExceeded, match="lifetime limit"):
        # The third run alone is well inside its run cap; the site's lifetime is not.
        charge(book, TRAINING, run_id="run-3", run_cap=run_alone * 2, lifetime_cap=lifetime * 0.99)
    assert book.history("run-3") == []
    assert book.epsilon_lifetime(DELTA) == pytest.approx(epsilon_of([TRAINING] * 2, DELTA))


def test_the_caps_survive_a_restart(tmp_path: Path) -> None:
    book = ledger(tmp_path)
    charge(book, TRAINING)
    book.close()
    reopened = ledger(tmp_path)
    cap = epsilon_of([TRAINING, TRAINING], DELTA) * 0.99
    with pytest.raises(BudgetExceeded):
        charge(reopened, TRAINING, run_cap=cap)
    assert reopened.history() == [TRAINING]


def test_partitions_compose_in_parallel(tmp_path: Path) -> None:
    """Training and held-out rows are disjoint patients: ε is the larger partition's, not sum."""
    book = ledger(tmp_path)
    charge(book, TRAINING, partition="train")
    train_only = epsilon_of([TRAINING], DELTA)
    assert epsilon_of([STATS, STATS], DELTA) < train_only < epsilon_of([TRAINING, STATS], DELTA)
    cap = train_only * 1.001  # room for nothing more on the training rows
    with pytest.raises(BudgetExceeded):
        charge(book, STATS, partition="train", run_cap=cap)
    # The same release on the held-out rows composes in parallel: it fits under the same cap.
    charge(book, STATS, partition="holdout", run_cap=cap)
    charge(book, STATS, partition="holdout", run_cap=cap)
    assert book.history("run-1", partition="holdout") == [STATS, STATS]
    assert book.epsilon_run("run-1", DELTA) == pytest.approx(train_only)
    assert book.epsilon_lifetime(DELTA) == pytest.approx(train_only)


def test_bad_charges_are_errors_and_record_nothing(tmp_path: Path) -> None:
    book = ledger(tmp_path)
    with pytest.raises(ValueError, match="partition"):
        charge(book, STATS, partition="test")
    with pytest.raises(ValueError, match="run ε cap"):
        charge(book, STATS, run_cap=0.0)
    with pytest.raises(ValueError, match="run_id"):
        charge(book, STATS, run_id="")
    assert book.releases() == []


def _data(tmp_path: Path, **changes: Any) -> DataConfig:
    base: dict[str, Any] = {
        "csv": tmp_path / "cohort.csv",
        "split_salt": "s" * 32,
        "holdout_fraction": 0.2,
        "id_column": "patient_id",
    }
    return DataConfig(**{**base, **changes})


def test_split_fingerprint_covers_salt_fraction_and_id_column(tmp_path: Path) -> None:
    reference = split_fingerprint(_data(tmp_path))
    assert split_fingerprint(_data(tmp_path)) == reference
    for change in (
        {"split_salt": "t" * 32},
        {"holdout_fraction": 0.3},
        {"id_column": None},
        {"id_column": "mrn"},
    ):
        assert split_fingerprint(_data(tmp_path, **change)) != reference, change
    # What does not decide the partition does not change the fingerprint.
    assert split_fingerprint(_data(tmp_path, csv=tmp_path / "other.csv")) == reference


def test_a_changed_split_is_refused_once_something_was_released(tmp_path: Path) -> None:
    old = split_fingerprint(_data(tmp_path))
    new = split_fingerprint(_data(tmp_path, split_salt="t" * 32))
    book = ledger(tmp_path, old)
    charge(book, STATS)
    book.close()
    with pytest.raises(SplitChanged, match="held-out split changed"):
        ledger(tmp_path, new)
    ledger(tmp_path, old).close()  # the old settings still open it
    assert ledger(tmp_path).history() == [STATS]  # and the refusal changed nothing


def test_the_split_may_change_while_nothing_was_released(tmp_path: Path) -> None:
    old = split_fingerprint(_data(tmp_path))
    new = split_fingerprint(_data(tmp_path, holdout_fraction=0.3))
    ledger(tmp_path, old).close()
    book = ledger(tmp_path, new)  # no release yet: the new split is simply recorded
    charge(book, STATS)
    book.close()
    with pytest.raises(SplitChanged):
        ledger(tmp_path, old)


def test_an_empty_fingerprint_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        ledger(tmp_path, "")


def test_a_charge_and_the_runs_record_of_processing_commit_together(tmp_path: Path) -> None:
    """The agent builds its records of processing on the ledger's connection, so the charge
    and the run's ε in its record are one transaction (one durable commit): both or neither."""
    from fedctl.demo import plan_text
    from federation.plan import parse_plan
    from site_agent.records import ProcessingRecords

    book = PrivacyLedger(tmp_path / "site.sqlite", clock=lambda: 1.0)
    records = ProcessingRecords(book)
    plan = parse_plan(plan_text(2))
    records.record_run(
        "run-1",
        plan,
        lawful_basis="consent",
        cohort_size=100,
        training_rows=80,
        pseudonyms=None,
        coordinator=None,
        now=1.0,
    )
    with pytest.raises(RuntimeError), book.transaction():
        first = charge(book, Entry(1.0, 0.1, 10))
        records.spent("run-1", first.epsilon_run, 2.0)
        raise RuntimeError("the process fails before the commit")
    assert book.releases("run-1") == [] and records.runs()[0]["epsilon"] in (None, 0.0)
    with book.transaction():
        second = charge(book, Entry(1.0, 0.1, 10))
        records.spent("run-1", second.epsilon_run, 2.0)
    again = ProcessingRecords(tmp_path / "site.sqlite")  # what another connection reads
    assert again.runs()[0]["epsilon"] == pytest.approx(second.epsilon_run)
    assert len(PrivacyLedger(tmp_path / "site.sqlite", clock=lambda: 1.0).releases("run-1")) == 1


def test_releases_are_filtered_by_run_and_purpose_in_order(tmp_path: Path) -> None:
    book = PrivacyLedger(tmp_path / "site.sqlite", clock=lambda: 1000.0)
    for run_id, purpose in [
        ("r1", "stats"),
        ("r1", "update"),
        ("r2", "stats"),
        ("r1", "update"),
        ("r1", "stats"),
    ]:
        book.charge(
            run_id=run_id, purpose=purpose, round=0, attempt=0, partition="train",
            noise_multiplier=2.0, sample_rate=1.0, steps=1, delta=1e-5,
            run_epsilon_cap=100.0, lifetime_epsilon_cap=100.0,
        )  # fmt: skip
    everything = book.releases()
    assert [(r["run_id"], r["purpose"]) for r in book.releases("r1", purpose="stats")] == [
        ("r1", "stats")
    ] * 2
    assert book.releases("r1", purpose="stats") == [
        r for r in everything if (r["run_id"], r["purpose"]) == ("r1", "stats")
    ]
    assert book.releases(purpose="update") == [r for r in everything if r["purpose"] == "update"]
    assert book.releases("r3") == [] and book.releases() == everything
