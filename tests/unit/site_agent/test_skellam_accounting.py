"""Skellam entries (distributed mode): the RDP bound recomputed independently, never below the
Gaussian of the same σ, tending to it as the quantisation gets finer, and state that round-trips."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest
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
D = 1000  # vector dimension: Δ1 = √d·Δ2


def skellam(sigma: float, q: float, steps: int, l2: float, l1: float | None = None) -> Entry:
    return Entry(sigma, q, steps, "skellam", l2, math.sqrt(D) * l2 if l1 is None else l1)


# ------------------------------------------------------------------ an independent recomputation
def _logsumexp(xs: list[float]) -> float:
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


def _skellam_step(alpha: int, sigma: float, l2: float, l1: float) -> float:
    """Agarwal et al. Cor. 3.6, μ the per-coordinate variance (σ·Δ2)²."""
    mu = (sigma * l2) ** 2
    return alpha * l2**2 / (2 * mu) + min(
        ((2 * alpha - 1) * l2**2 + 6 * l1) / (4 * mu**2), 3 * l1 / (2 * mu)
    )


def _zhu_wang(alpha: int, q: float, eps: Callable[[int], float]) -> float:
    """Zhu & Wang's general Poisson-subsampling upper bound, term by term; ``eps(k)`` is the RDP
    of one unsubsampled step at order k."""
    terms = [
        (alpha - 1) * math.log(1 - q) + math.log(alpha * q - q + 1),
        math.log(math.comb(alpha, 2)) + 2 * math.log(q) + (alpha - 2) * math.log(1 - q) + eps(2),
    ]
    for k in range(3, alpha + 1):
        terms.append(
            math.log(3)
            + math.log(math.comb(alpha, k))
            + (alpha - k) * math.log(1 - q)
            + k * math.log(q)
            + (k - 1) * eps(k)
        )
    return _logsumexp(terms) / (alpha - 1)


def _gaussian_step_subsampled(alpha: int, sigma: float, q: float) -> float:
    """Mironov et al. (2019), integer order: the exact sum Opacus and dp_accounting compute."""
    if q == 1:
        return alpha / (2 * sigma**2)
    terms = [
        math.log(math.comb(alpha, i))
        + i * math.log(q)
        + (alpha - i) * math.log(1 - q)
        + (i * i - i) / (2 * sigma**2)
        for i in range(alpha + 1)
    ]
    return _logsumexp(terms) / (alpha - 1)


def reference_epsilon(history: list[Entry], delta: float) -> float:
    """The whole computation written out: per-order RDP, composed, Balle et al.'s conversion."""
    best = math.inf
    for order in RDP_ORDERS:
        alpha = int(order)
        rdp = 0.0
        for e in history:
            s, q = e.noise_multiplier, e.sample_rate
            if e.mechanism == "skellam":
                assert e.l2_sensitivity is not None and e.l1_sensitivity is not None
                l2, l1 = e.l2_sensitivity, e.l1_sensitivity

                def step(a: int, s: float = s, l2: float = l2, l1: float = l1) -> float:
                    return _skellam_step(a, s, l2, l1)

                one = step(alpha) if q == 1 else min(_zhu_wang(alpha, q, step), step(alpha))
            else:
                one = _gaussian_step_subsampled(alpha, s, q)
            rdp += e.steps * one
        eps = (
            rdp - (math.log(delta) + math.log(alpha)) / (alpha - 1) + math.log((alpha - 1) / alpha)
        )
        best = min(best, eps)
    return best


def test_skellam_history_matches_an_independent_recomputation() -> None:
    history = [
        skellam(4.0, 1.0, 1, 30.0, 200.0),  # statistics, one full-batch release
        skellam(1.2, 0.05, 100, 50.0),  # training rounds
        Entry(1.1, 0.02, 300),  # a Gaussian phase in the same history
        skellam(6.0, 1.0, 1, 8.0, 20.0),  # metrics
    ]
    assert epsilon_of(history, DELTA) == pytest.approx(reference_epsilon(history, DELTA), rel=1e-9)


def test_one_subsampled_skellam_entry_matches_the_recomputation() -> None:
    history = [skellam(0.9, 0.1, 300, 12.0)]
    assert epsilon_of(history, DELTA) == pytest.approx(reference_epsilon(history, DELTA), rel=1e-9)


# --------------------------------------------------------------------- versus the Gaussian
@pytest.mark.parametrize(("sigma", "steps"), [(1.0, 1), (5.0, 10), (0.8, 3)])
def test_full_batch_skellam_tends_to_the_gaussian_from_above(sigma: float, steps: int) -> None:
    gaussian = epsilon_of([Entry(sigma, 1.0, steps)], DELTA)
    previous = math.inf
    for l2 in (1.0, 10.0, 100.0, 1e3, 1e4, 1e6):
        eps = epsilon_of([skellam(sigma, 1.0, steps, l2)], DELTA)
        assert gaussian <= eps <= previous
        previous = eps
    assert previous == pytest.approx(gaussian, rel=1e-6)


@pytest.mark.parametrize(("sigma", "q", "steps"), [(1.0, 0.1, 300), (2.0, 0.05, 500)])
def test_subsampled_skellam_tends_to_the_bound_on_the_gaussian_from_above(
    sigma: float, q: float, steps: int
) -> None:
    """For q < 1 the limit is Zhu & Wang's bound on the Gaussian's RDP curve, which sits above
    Opacus's exact subsampled-Gaussian RDP (the bound's factor 3), so never below the Gaussian."""
    gaussian = epsilon_of([Entry(sigma, q, steps)], DELTA)
    limit = reference_epsilon([skellam(sigma, q, steps, 1e12)], DELTA)
    previous = math.inf
    for l2 in (1.0, 10.0, 100.0, 1e3, 1e4, 1e6):
        eps = epsilon_of([skellam(sigma, q, steps, l2)], DELTA)
        assert gaussian < limit <= eps <= previous
        previous = eps
    assert previous == pytest.approx(limit, rel=1e-6)


def test_skellam_epsilon_falls_as_sigma_grows() -> None:
    for q, steps, l2 in ((1.0, 1, 5.0), (0.05, 200, 40.0)):
        values = [epsilon_of([skellam(s, q, steps, l2)], DELTA) for s in (0.6, 0.8, 1, 2, 4, 8)]
        assert values == sorted(values, reverse=True)
        assert len(set(values)) == len(values)


@settings(max_examples=40, deadline=None)
@given(
    sigma=st.floats(0.5, 20.0),
    q=st.one_of(st.just(1.0), st.floats(0.001, 0.9)),
    steps=st.integers(1, 2000),
    l2=st.floats(1.0, 1e5),
)
def test_skellam_is_never_below_the_gaussian_of_the_same_sigma(
    sigma: float, q: float, steps: int, l2: float
) -> None:
    gaussian = epsilon_of([Entry(sigma, q, steps)], DELTA)
    assert epsilon_of([skellam(sigma, q, steps, l2)], DELTA) >= gaussian


def test_a_skellam_history_is_accounted_in_rdp_whatever_the_kind() -> None:
    history = [Entry(1.1, 0.05, 100), skellam(1.1, 0.05, 100, 20.0)]
    rdp = epsilon_of(history, DELTA, "rdp")
    assert epsilon_of(history, DELTA, "pld") == rdp
    assert epsilon_of(history, DELTA, "prv") == rdp
    assert epsilon_of([Entry(1.1, 0.05, 100)], DELTA, "pld") < epsilon_of(
        [Entry(1.1, 0.05, 100)], DELTA, "rdp"
    )


def test_no_skellam_noise_is_infinite_epsilon() -> None:
    assert epsilon_of([skellam(0.0, 0.1, 10, 5.0)], DELTA) == math.inf


# ------------------------------------------------------------------------------ calibration
@pytest.mark.parametrize("kind", ["rdp", "pld"])
def test_skellam_calibration_is_tight_and_needs_more_noise(kind: str) -> None:
    l2, l1 = 30.0, 30.0 * math.sqrt(D)
    tol = 1e-3
    sigma = calibrate_noise_multiplier(
        2.0,
        DELTA,
        0.05,
        100,
        kind,  # type: ignore[arg-type]
        prior=[skellam(5.0, 1.0, 1, 10.0)],
        tolerance=tol,
        mechanism="skellam",
        l2_sensitivity=l2,
        l1_sensitivity=l1,
    )

    def eps(s: float) -> float:
        return epsilon_of([skellam(5.0, 1.0, 1, 10.0), skellam(s, 0.05, 100, l2, l1)], DELTA)

    assert eps(sigma) <= 2.0 < eps(sigma * (1 - tol))
    assert sigma > calibrate_noise_multiplier(2.0, DELTA, 0.05, 100, "rdp")


def test_skellam_calibration_needs_the_sensitivities() -> None:
    with pytest.raises(AccountingError, match="l2_sensitivity"):
        calibrate_noise_multiplier(2.0, DELTA, 0.05, 100, mechanism="skellam")


# --------------------------------------------------------------------------- entries, state
@pytest.mark.parametrize(
    "kwargs",
    [
        {"mechanism": "skellam"},
        {"mechanism": "skellam", "l2_sensitivity": 1.0},
        {"mechanism": "skellam", "l2_sensitivity": 0.0, "l1_sensitivity": 1.0},
        {"mechanism": "skellam", "l2_sensitivity": 1.0, "l1_sensitivity": -2.0},
        {"mechanism": "skellam", "l2_sensitivity": math.inf, "l1_sensitivity": 1.0},
        {"mechanism": "skellam", "l2_sensitivity": True, "l1_sensitivity": 1.0},
        {"mechanism": "gaussian", "l2_sensitivity": 1.0},
        {"l1_sensitivity": 3.0},
        {"mechanism": "laplace"},
    ],
)
def test_malformed_entries_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(AccountingError):
        Entry(1.0, 0.1, 10, **kwargs)  # type: ignore[arg-type]


def test_skellam_state_round_trips_and_old_states_still_load() -> None:
    acc = PrivacyAccountant()
    acc.record_gaussian_release(7.3)
    acc.record(1.1, 0.01, 300, mechanism="skellam", l2_sensitivity=16.0, l1_sensitivity=400.0)
    doc = json.loads(acc.to_json())
    assert doc["history"] == [[7.3, 1.0, 1], [1.1, 0.01, 300, "skellam", 16.0, 400.0]]
    restored = PrivacyAccountant.from_json(acc.to_json())
    assert restored == acc
    assert restored.epsilon(DELTA) == acc.epsilon(DELTA)
    old = PrivacyAccountant.from_json(json.dumps({"kind": "rdp", "history": [[1.1, 0.01, 300]]}))
    assert old.history == [Entry(1.1, 0.01, 300)]


@pytest.mark.parametrize(
    "row",
    [
        [1.0, 0.1, 3, "skellam", 2.0],
        [1.0, 0.1, 3, "gaussian", 2.0, 3.0],
        [1.0, 0.1, 3, "skellam", 0.0, 3.0],
        [1.0, 0.1, 3.5],
        [1.0, 0.1],
    ],
)
def test_malformed_skellam_rows_are_a_typed_error(row: list[object]) -> None:
    with pytest.raises(AccountingError):
        PrivacyAccountant.from_json(json.dumps({"kind": "rdp", "history": [row]}))


def test_record_merges_only_identical_mechanism_sigma_q_and_sensitivities() -> None:
    acc = PrivacyAccountant()
    sk = {"mechanism": "skellam", "l2_sensitivity": 10.0, "l1_sensitivity": 50.0}
    acc.record(1.0, 0.1, 10, **sk)  # type: ignore[arg-type]
    acc.record(1.0, 0.1, 5, **sk)  # type: ignore[arg-type]
    acc.record(1.0, 0.1, 2)  # same σ, q but Gaussian
    acc.record(1.0, 0.1, 1, mechanism="skellam", l2_sensitivity=10.0, l1_sensitivity=60.0)
    acc.record(1.0, 0.1, 4, mechanism="skellam", l2_sensitivity=12.0, l1_sensitivity=60.0)
    assert acc.history == [
        Entry(1.0, 0.1, 15, "skellam", 10.0, 50.0),
        Entry(1.0, 0.1, 2),
        Entry(1.0, 0.1, 1, "skellam", 10.0, 60.0),
        Entry(1.0, 0.1, 4, "skellam", 12.0, 60.0),
    ]
    predicted = acc.epsilon_if(
        DELTA, 1.0, 0.1, 4, mechanism="skellam", l2_sensitivity=12.0, l1_sensitivity=60.0
    )
    acc.record(1.0, 0.1, 4, mechanism="skellam", l2_sensitivity=12.0, l1_sensitivity=60.0)
    assert acc.history[-1] == Entry(1.0, 0.1, 8, "skellam", 12.0, 60.0)
    assert acc.epsilon(DELTA) == pytest.approx(predicted, rel=1e-12)
