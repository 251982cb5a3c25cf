"""The persistent privacy accountant: state round-trips, composition, what-if queries, errors."""

from __future__ import annotations

import json

import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st

from site_agent.accounting import (
    RDP_ORDERS,
    AccountingError,
    Entry,
    PrivacyAccountant,
    calibrate_noise_multiplier,
    epsilon_of,
)

pytestmark = pytest.mark.unit

DELTA = 1e-5


def google_rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """Independent reference: Google's dp_accounting RDP accountant at Opacus's orders."""
    acc = RdpAccountant(orders=list(RDP_ORDERS))
    for sigma, q, steps in history:
        event = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma))
        acc.compose(dp_event.SelfComposedDpEvent(event, steps))
    return float(acc.get_epsilon(delta))


def test_json_round_trip_keeps_history_and_epsilon() -> None:
    acc = PrivacyAccountant()
    acc.record_gaussian_release(7.3)
    acc.record(1.1, 0.01, 300)
    restored = PrivacyAccountant.from_json(acc.to_json())
    assert restored == acc
    assert restored.epsilon(DELTA) == acc.epsilon(DELTA)


def test_record_merges_identical_consecutive_entries_only() -> None:
    acc = PrivacyAccountant()
    acc.record(1.0, 0.1, 10)
    acc.record(1.0, 0.1, 5)
    acc.record(2.0, 1.0, 1)
    acc.record(1.0, 0.1, 3)
    assert acc.history == [Entry(1.0, 0.1, 15), Entry(2.0, 1.0, 1), Entry(1.0, 0.1, 3)]


def test_statistics_training_and_metrics_releases_compose_like_google() -> None:
    history = [(4.0, 1.0, 1), (0.9, 0.02, 500), (6.0, 1.0, 1)]
    acc = PrivacyAccountant()
    for sigma, q, steps in history:
        acc.record(sigma, q, steps)
    assert acc.epsilon(DELTA) == pytest.approx(google_rdp_epsilon(history, DELTA), abs=1e-6)


def test_epsilon_grows_with_every_release() -> None:
    acc = PrivacyAccountant()
    assert acc.epsilon(DELTA) == 0.0
    previous = 0.0
    for _ in range(3):
        acc.record(1.0, 0.05, 20)
        now = acc.epsilon(DELTA)
        assert now > previous
        previous = now


def test_epsilon_if_predicts_without_recording() -> None:
    acc = PrivacyAccountant()
    acc.record(1.0, 0.05, 20)
    before = acc.to_json()
    predicted = acc.epsilon_if(DELTA, 3.0, 1.0, 1)
    assert acc.to_json() == before
    acc.record(3.0, 1.0, 1)
    assert acc.epsilon(DELTA) == predicted


def test_prv_accountant_is_tighter_than_rdp() -> None:
    history = [Entry(1.0, 0.02, 400)]
    rdp = epsilon_of(history, DELTA, "rdp")
    prv = epsilon_of(history, DELTA, "prv")
    assert 0 < prv < rdp


@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_calibration_is_tight(kind: str) -> None:
    sigma = calibrate_noise_multiplier(2.0, DELTA, 0.05, 100, kind)  # type: ignore[arg-type]
    assert epsilon_of([Entry(sigma, 0.05, 100)], DELTA, kind) <= 2.0  # type: ignore[arg-type]
    smaller = sigma * 0.99
    assert epsilon_of([Entry(smaller, 0.05, 100)], DELTA, kind) > 2.0  # type: ignore[arg-type]


def test_calibration_refuses_a_spent_budget() -> None:
    with pytest.raises(AccountingError, match="already spent"):
        calibrate_noise_multiplier(1.0, DELTA, 0.1, 10, prior=[Entry(0.5, 1.0, 1)])


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        json.dumps({"history": []}),
        json.dumps({"kind": "gdp", "history": []}),
        json.dumps({"kind": "rdp", "history": [[1.0, 1.5, 1]]}),
        json.dumps({"kind": "rdp", "history": [[1.0, 0.1, 0]]}),
        json.dumps({"kind": "rdp", "history": [[-1.0, 0.1, 3]]}),
    ],
)
def test_malformed_state_is_a_typed_error(text: str) -> None:
    with pytest.raises(AccountingError):
        PrivacyAccountant.from_json(text)


def test_bad_delta_is_a_typed_error() -> None:
    with pytest.raises(AccountingError, match="delta"):
        PrivacyAccountant().epsilon(0.0)


@settings(max_examples=15, deadline=None)  # Google's accountant is the slow side
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.8, 4.0]),
            st.sampled_from([0.01, 1.0]),
            st.integers(1, 50),
        ),
        min_size=1,
        max_size=12,  # four mechanisms: rows repeat one
    )
)
def test_a_long_history_of_few_mechanisms_composes_like_google(
    history: list[tuple[float, float, int]],
) -> None:
    # rows of the same mechanism are summed by their steps before composing (the cost follows
    # the mechanisms, not the rows); Google's accountant composes every row on its own
    entries = [Entry(sigma, q, steps) for sigma, q, steps in history]
    assert epsilon_of(entries, DELTA, "rdp") == pytest.approx(
        google_rdp_epsilon(history, DELTA), rel=1e-6
    )
