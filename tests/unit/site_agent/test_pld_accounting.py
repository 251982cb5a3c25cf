"""The PLD accountant (dp_accounting): tighter than RDP, equal to dp_accounting's own PLDAccountant
composing the same events, calibration that is tight, and state that round-trips."""

from __future__ import annotations

import math

import pytest
from dp_accounting import NeighboringRelation, dp_event, pld

from site_agent.accounting import (
    PLD_DISCRETIZATION,
    Entry,
    PrivacyAccountant,
    calibrate_noise_multiplier,
    epsilon_of,
    pld_value_discretization,
)

pytestmark = pytest.mark.unit

DELTA = 1e-5

HISTORIES: list[list[Entry]] = [
    [Entry(1.0, 0.1, 300)],
    [Entry(0.5, 0.01, 2000)],
    [Entry(2.0, 0.02, 2000)],
    [Entry(5.0, 0.5, 1000)],
    [Entry(0.7, 0.05, 50)],
    [Entry(20.0, 1.0, 50)],
    [Entry(1.3, 1.0, 1)],
    # statistics, training rounds, metrics: what a run charges
    [Entry(4.0, 1.0, 1), Entry(0.9, 0.02, 500), Entry(6.0, 1.0, 1)],
    [Entry(3.0, 1.0, 1), Entry(1.1, 0.05, 200), Entry(1.1, 0.05, 200), Entry(1.4, 0.05, 100)],
]


def dp_accounting_pld_epsilon(history: list[Entry], delta: float, grid: float) -> float:
    """Independent reference: dp_accounting's PLDAccountant, one event per entry."""
    accountant = pld.PLDAccountant(
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        value_discretization_interval=grid,
    )
    events: list[dp_event.DpEvent] = []
    for e in history:
        gaussian = dp_event.GaussianDpEvent(e.noise_multiplier)
        step = (
            gaussian
            if e.sample_rate == 1
            else dp_event.PoissonSampledDpEvent(e.sample_rate, gaussian)
        )
        events.append(dp_event.SelfComposedDpEvent(step, e.steps))
    return float(accountant.compose(dp_event.ComposedDpEvent(events)).get_epsilon(delta))


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning")  # PRV's
@pytest.mark.parametrize("history", HISTORIES, ids=range(len(HISTORIES)))
def test_pld_is_below_rdp_and_prv(history: list[Entry]) -> None:
    """All three are upper bounds; the PLD is the tightest (RDP's conversion loses ~10 %, PRV
    reports its upper estimate, ~0.01 above its central one)."""
    eps = epsilon_of(history, DELTA, "pld")
    assert 0 < eps < epsilon_of(history, DELTA, "rdp")
    assert eps < epsilon_of(history, DELTA, "prv")


@pytest.mark.parametrize("history", HISTORIES, ids=range(len(HISTORIES)))
def test_pld_equals_dp_accountings_accountant(history: list[Entry]) -> None:
    grid = pld_value_discretization(history, DELTA)
    assert PLD_DISCRETIZATION <= grid <= 2 * PLD_DISCRETIZATION  # ε ≲ 20 here: the fine grid
    reference = dp_accounting_pld_epsilon(history, DELTA, grid)
    assert epsilon_of(history, DELTA, "pld") == pytest.approx(reference, rel=1e-6)


def test_a_large_epsilon_history_gets_a_coarser_grid_still_pessimistic() -> None:
    """ε in the hundreds: the grid grows with ε (fast), the figure barely moves, stays < RDP."""
    history = [Entry(1.0, 1.0, 300)]
    grid = pld_value_discretization(history, DELTA)
    assert grid > PLD_DISCRETIZATION
    eps = epsilon_of(history, DELTA, "pld")
    fine = dp_accounting_pld_epsilon(history, DELTA, PLD_DISCRETIZATION)
    assert eps == pytest.approx(dp_accounting_pld_epsilon(history, DELTA, grid), rel=1e-6)
    assert eps == pytest.approx(fine, rel=1e-3)
    assert eps < epsilon_of(history, DELTA, "rdp")


def test_no_noise_is_infinite_epsilon() -> None:
    assert epsilon_of([Entry(1.0, 0.1, 10), Entry(0.0, 1.0, 1)], DELTA, "pld") == math.inf


@pytest.mark.parametrize(
    ("target", "q", "steps", "prior"),
    [
        (1.0, 0.1, 300, []),
        (2.0, 0.05, 100, [Entry(3.0, 1.0, 1)]),
        (8.0, 0.01, 2000, []),
        (3.0, 1.0, 1, []),
    ],
)
def test_pld_calibration_is_tight(target: float, q: float, steps: int, prior: list[Entry]) -> None:
    tolerance = 1e-3
    sigma = calibrate_noise_multiplier(target, DELTA, q, steps, "pld", prior, tolerance)
    assert epsilon_of([*prior, Entry(sigma, q, steps)], DELTA, "pld") <= target
    smaller = sigma * (1 - tolerance)
    assert epsilon_of([*prior, Entry(smaller, q, steps)], DELTA, "pld") > target
    # The PLD needs less noise than RDP for the same target.
    assert sigma < calibrate_noise_multiplier(target, DELTA, q, steps, "rdp", prior, tolerance)


def test_pld_state_round_trips() -> None:
    acc = PrivacyAccountant(kind="pld")
    acc.record_gaussian_release(7.3)
    acc.record(1.1, 0.01, 300)
    acc.record(1.1, 0.01, 200)  # merges
    restored = PrivacyAccountant.from_json(acc.to_json())
    assert restored == acc
    assert restored.kind == "pld"
    assert restored.history == [Entry(7.3, 1.0, 1), Entry(1.1, 0.01, 500)]
    assert restored.epsilon(DELTA) == acc.epsilon(DELTA)
    reference = dp_accounting_pld_epsilon(acc.history, DELTA, PLD_DISCRETIZATION)
    assert acc.epsilon(DELTA) == pytest.approx(reference, rel=1e-6)
