"""survival.metrics against lifelines, scikit-survival and brute-force definitions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lifelines.utils import concordance_index
from sksurv.metrics import brier_score as sk_brier_score
from sksurv.metrics import integrated_brier_score as sk_integrated_brier_score
from sksurv.nonparametric import CensoringDistributionEstimator
from sksurv.util import Surv

from survival.metrics import (
    CensoringSurvival,
    MetricInputError,
    NoComparablePairsError,
    antolini_c,
    antolini_stats,
    brier_stats,
    harrell_c,
    harrell_stats,
    integrated_brier_score,
    survival_at,
)

pytestmark = pytest.mark.unit

Array = np.ndarray


# --------------------------------------------------------------------------- brute-force references


def _comparable(ti: float, tj: float, ei: bool, ej: bool) -> bool:
    """lifelines' admissible pair, i the earlier event (a censoring tied with it outlives it)."""
    return bool(ei and (ti < tj or (ti == tj and not ej)))


def brute_harrell(time: Array, event: Array, risk: Array) -> tuple[float, float]:
    conc = comp = 0.0
    n = len(time)
    for i in range(n):
        for j in range(n):
            if _comparable(time[i], time[j], event[i], event[j]):
                comp += 1
                conc += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return conc, comp


def step_s(row: Array, times: Array, t: float) -> float:
    """S(t) of one curve: value at the last grid time <= t, 1 before the grid."""
    k = -1
    for idx, g in enumerate(times):
        if g <= t:
            k = idx
    return 1.0 if k < 0 else float(row[k])


def brute_antolini(time: Array, event: Array, surv: Array, times: Array) -> tuple[float, float]:
    conc = comp = 0.0
    n = len(time)
    for i in range(n):
        for j in range(n):
            if _comparable(time[i], time[j], event[i], event[j]):
                comp += 1
                si = step_s(surv[i], times, time[i])
                sj = step_s(surv[j], times, time[i])
                conc += 1.0 if si < sj else 0.5 if si == sj else 0.0
    return conc, comp


def tied_data(rng: np.random.Generator, n: int) -> tuple[Array, Array, Array]:
    """Integer times and one-decimal risks: many ties in both."""
    time = rng.integers(1, max(3, n // 8), n).astype(float)
    event = rng.random(n) < 0.6
    risk = np.round(rng.normal(size=n), 1)
    return time, event, risk


def random_surv(rng: np.random.Generator, n: int, k: int) -> Array:
    """Non-increasing curves in [0, 1], rounded so that equal values (ties) occur."""
    drops = rng.random((n, k)) * 0.3
    return np.round(np.clip(1.0 - np.cumsum(drops, axis=1), 0.0, 1.0), 2)


small_cases = st.integers(min_value=0, max_value=25).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(1, 6), min_size=n, max_size=n),
        st.lists(st.booleans(), min_size=n, max_size=n),
        st.lists(st.integers(-3, 3), min_size=n, max_size=n),
    )
)


# --------------------------------------------------------------------------- Harrell


@pytest.mark.parametrize(("seed", "n"), [(0, 40), (1, 300), (2, 2000), (3, 7)])
def test_harrell_matches_lifelines_with_ties(seed: int, n: int) -> None:
    time, event, risk = tied_data(np.random.default_rng(seed), n)
    expected = concordance_index(time, -risk, event)
    assert harrell_c(time, event, risk) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_harrell_counts_match_brute_force(seed: int) -> None:
    time, event, risk = tied_data(np.random.default_rng(seed), 120)
    stats = harrell_stats(time, event, risk)
    assert (stats.concordant, stats.comparable) == brute_harrell(time, event, risk)


@settings(max_examples=300, deadline=None)
@given(small_cases)
def test_harrell_property_small_inputs(case: tuple[Any, ...]) -> None:
    time, event, risk = (np.asarray(x, dtype=float) for x in case)
    event = event.astype(bool)
    stats = harrell_stats(time, event, risk)
    assert (stats.concordant, stats.comparable) == brute_harrell(time, event, risk)


def test_harrell_perfect_and_reversed() -> None:
    rng = np.random.default_rng(5)
    time = rng.permutation(50).astype(float) + 1
    event = np.ones(50, dtype=bool)
    assert harrell_c(time, event, -time) == 1.0
    assert harrell_c(time, event, time) == 0.0
    assert harrell_c(time, event, np.zeros(50)) == 0.5


# --------------------------------------------------------------------------- Antolini


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=1, max_value=20).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(0, 8), min_size=n, max_size=n),
            st.lists(st.booleans(), min_size=n, max_size=n),
            st.integers(0, 2**32 - 1),
            st.lists(st.integers(1, 7), min_size=1, max_size=5, unique=True),
        )
    )
)
def test_antolini_property_vs_brute_force(case: tuple[Any, ...]) -> None:
    t, e, seed, grid = case
    time = np.asarray(t, dtype=float) + 0.5 * (np.asarray(t) % 2)  # some times on the grid
    event = np.asarray(e, dtype=bool)
    times = np.sort(np.asarray(grid, dtype=float))
    surv = random_surv(np.random.default_rng(seed), len(time), len(times))
    stats = antolini_stats(time, event, surv, times)
    assert (stats.concordant, stats.comparable) == brute_antolini(time, event, surv, times)


def test_antolini_matches_brute_force_larger() -> None:
    rng = np.random.default_rng(11)
    n, times = 250, np.array([2.0, 4.0, 6.5, 9.0, 12.0])
    time = rng.integers(0, 15, n).astype(float)
    event = rng.random(n) < 0.5
    surv = random_surv(rng, n, times.size)
    stats = antolini_stats(time, event, surv, times)
    assert (stats.concordant, stats.comparable) == brute_antolini(time, event, surv, times)


@pytest.mark.parametrize("seed", range(3))
def test_antolini_equals_harrell_for_proportional_curves(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 400
    times = np.linspace(1.0, 20.0, 12)
    time = rng.integers(1, 25, n).astype(float)  # every time at or after the first grid time
    event = rng.random(n) < 0.6
    risk = np.round(rng.uniform(-1.0, 1.0, n), 1)  # ties in risk
    base = np.linspace(0.95, 0.3, times.size)  # S0 strictly inside (0, 1)
    surv = base[None, :] ** np.exp(risk)[:, None]
    expected = harrell_c(time, event, risk)
    assert antolini_c(time, event, surv, times) == pytest.approx(expected, abs=1e-12)
    a, h = antolini_stats(time, event, surv, times), harrell_stats(time, event, risk)
    assert (a.concordant, a.comparable) == (h.concordant, h.comparable)


def test_survival_at_step_convention() -> None:
    surv = np.array([[0.9, 0.5, 0.2]])
    times = np.array([1.0, 2.0, 3.0])
    got = survival_at(surv, times, [0.5, 1.0, 1.5, 2.0, 3.0, 99.0])
    np.testing.assert_array_equal(got, [[1.0, 0.9, 0.9, 0.5, 0.2, 0.2]])


# --------------------------------------------------------------------------- censoring KM


def _sk_censoring(time: Array, event: Array) -> CensoringDistributionEstimator:
    return CensoringDistributionEstimator().fit(Surv.from_arrays(event=event, time=time))


def test_censoring_km_matches_sksurv_reverse_km() -> None:
    rng = np.random.default_rng(3)
    time = rng.integers(1, 40, 300).astype(float)
    event = rng.random(300) < 0.5
    time[np.argmax(time)] = 100.0  # a unique last time ...
    event[np.argmax(time)] = True  # ... that is an event, so G > 0 everywhere
    g = CensoringSurvival.from_data(time, event)
    sk = _sk_censoring(time, event)
    probe = np.concatenate([np.arange(0.0, 100.0, 0.5), [100.0]])
    np.testing.assert_allclose(g(probe), sk.predict_proba(probe), rtol=0, atol=1e-14)
    # the left limit at an integer time is the value half a day earlier (no times in between)
    np.testing.assert_allclose(
        g.left_limit(probe[probe >= 1]), sk.predict_proba(probe[probe >= 1] - 0.5), atol=1e-14
    )


# --------------------------------------------------------------------------- Brier / IBS


def _brier_setup(rng: np.random.Generator, integer_times: bool) -> dict[str, Array]:
    n_train, n_test = 400, 250

    def draw(m: int) -> Array:
        return rng.integers(1, 60, m).astype(float) if integer_times else rng.uniform(0.5, 60, m)

    train_t, test_t = draw(n_train), draw(n_test)
    train_e, test_e = rng.random(n_train) < 0.55, rng.random(n_test) < 0.55
    train_t[0], train_e[0] = 80.0, True  # unique last training time is an event: G > 0
    times = np.linspace(2.0, 60.0, 15)
    surv = random_surv(rng, n_test, times.size)
    eval_times = np.quantile(test_t, [0.1, 0.25, 0.4, 0.55, 0.7, 0.85])
    if integer_times:
        eval_times = np.unique(np.round(eval_times))  # integer eval times: ties with event times
    return dict(
        train_t=train_t, train_e=train_e, test_t=test_t, test_e=test_e,
        surv=surv, times=times, eval_times=eval_times,
    )  # fmt: skip


@pytest.mark.parametrize("seed", range(3))
def test_brier_and_ibs_match_sksurv_without_time_ties(seed: int) -> None:
    d = _brier_setup(np.random.default_rng(seed), integer_times=False)
    g = CensoringSurvival.from_data(d["train_t"], d["train_e"])
    stats = brier_stats(d["test_t"], d["test_e"], d["surv"], d["times"], d["eval_times"], g)
    estimate = survival_at(d["surv"], d["times"], d["eval_times"])
    y_train = Surv.from_arrays(event=d["train_e"], time=d["train_t"])
    y_test = Surv.from_arrays(event=d["test_e"], time=d["test_t"])
    _, sk = sk_brier_score(y_train, y_test, estimate, d["eval_times"])
    np.testing.assert_allclose(stats.brier(), sk, rtol=1e-12)
    sk_ibs = sk_integrated_brier_score(y_train, y_test, estimate, d["eval_times"])
    ibs = integrated_brier_score(
        d["test_t"], d["test_e"], d["surv"], d["times"], d["eval_times"], g
    )
    assert ibs == pytest.approx(sk_ibs, rel=1e-12)


def test_brier_differs_from_sksurv_exactly_by_left_limit_weights() -> None:
    """With tied times we weight a case by 1/G(t_i-) (Graf), sksurv by 1/G(t_i); check the gap."""
    d = _brier_setup(np.random.default_rng(21), integer_times=True)
    g = CensoringSurvival.from_data(d["train_t"], d["train_e"])
    ours = brier_stats(d["test_t"], d["test_e"], d["surv"], d["times"], d["eval_times"], g).brier()
    estimate = survival_at(d["surv"], d["times"], d["eval_times"])
    y_train = Surv.from_arrays(event=d["train_e"], time=d["train_t"])
    y_test = Surv.from_arrays(event=d["test_e"], time=d["test_t"])
    _, sk = sk_brier_score(y_train, y_test, estimate, d["eval_times"])
    cens = CensoringDistributionEstimator().fit(y_train)
    g_at = cens.predict_proba(d["test_t"])
    g_before = cens.predict_proba(d["test_t"] - 0.5)  # integer times: nothing in between
    case = (d["test_t"][:, None] <= d["eval_times"][None, :]) & d["test_e"][:, None]
    gap = np.where(case, estimate**2 * (1 / g_before - 1 / g_at)[:, None], 0.0).mean(axis=0)
    assert np.abs(gap).max() > 1e-4  # the data really has event/censoring ties
    np.testing.assert_allclose(ours - sk, gap, rtol=1e-9, atol=1e-15)


def test_brier_hand_example() -> None:
    """Two patients, no censoring: G = 1 and the Brier score is the plain mean squared error."""
    g = CensoringSurvival.from_data([1.0, 2.0], [1, 1])
    surv = np.array([[0.8, 0.4], [0.9, 0.6]])
    stats = brier_stats([1.5, 3.0], [1, 1], surv, [1.0, 2.0], [1.0, 2.0], g)
    # t=1: both alive -> (1-0.8)^2 + (1-0.9)^2; t=2: first died (0.4^2), second alive (1-0.6)^2
    np.testing.assert_allclose(stats.brier(), [(0.04 + 0.01) / 2, (0.16 + 0.16) / 2])
    assert stats.integrated() == pytest.approx((0.025 + 0.16) / 2)


# --------------------------------------------------------------------------- errors


def test_errors_are_clear_and_typed() -> None:
    t, e, r = np.array([1.0, 2.0, 3.0]), np.array([1, 0, 1]), np.array([0.1, 0.2, 0.3])
    times, surv = np.array([1.0, 2.0]), np.full((3, 2), 0.5)
    with pytest.raises(MetricInputError, match="risk has length 2"):
        harrell_stats(t, e, r[:2])
    with pytest.raises(MetricInputError, match="event has length 2"):
        harrell_stats(t, e[:2], r)
    with pytest.raises(MetricInputError, match=r"risk contains NaN.*index 1"):
        harrell_c(t, e, [0.1, np.nan, 0.3])
    with pytest.raises(MetricInputError, match="event must be 0 or 1"):
        harrell_c(t, [1, 2, 0], r)
    with pytest.raises(MetricInputError, match="time must be >= 0"):
        harrell_c([1.0, -2.0, 3.0], e, r)
    with pytest.raises(NoComparablePairsError, match="no comparable pairs"):
        harrell_c(t, [0, 0, 0], r)
    with pytest.raises(NoComparablePairsError):
        antolini_c(t, [0, 0, 0], surv, times)
    with pytest.raises(MetricInputError, match=r"surv must be probabilities in \[0, 1\]"):
        antolini_c(t, e, np.full((3, 2), 1.5), times)
    with pytest.raises(MetricInputError, match=r"surv must have shape \(n, K\) = \(3, 2\)"):
        antolini_c(t, e, surv[:2], times)
    with pytest.raises(MetricInputError, match="times must be strictly increasing"):
        antolini_c(t, e, surv, [2.0, 1.0])
    g = CensoringSurvival.from_data(t, e)
    with pytest.raises(MetricInputError, match=r"surv must be probabilities"):
        brier_stats(t, e, np.full((3, 2), -0.1), times, times, g)
    with pytest.raises(MetricInputError, match="G is 0 at eval time 2"):
        brier_stats(t, e, surv, times, times, CensoringSurvival.from_data([1.0, 2.0], [1, 0]))
    with pytest.raises(MetricInputError, match="at least two eval_times"):
        integrated_brier_score(t, e, surv, times, [1.5], g)
    with pytest.raises(MetricInputError, match="censored <= at_risk"):
        CensoringSurvival.from_counts([1.0, 2.0], [3.0, 0.0], [2.0, 1.0])
