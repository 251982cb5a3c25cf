"""Survival metrics on one data set: Harrell's C, Antolini's C^td, IPCW (integrated) Brier score.

Every metric is computed in two steps: ``*_stats`` returns the counts or sums behind it (pair
counts, per-time sums), which the tests check against brute-force definitions, and the record's
``value``/``brier``/``integrated`` finalises it. These are the metrics of a model scored where
the rows are (the demo's common test set, the benchmarks, a hospital's own evaluation). The
federation's evaluation does not sum them across sites: Harrell's pair counts move by O(n) when
one patient is added, so their DP release would be pure noise; the sites release a windowed,
bounded-sensitivity version instead (``federation/releases.py::MetricsLayout``,
``site_agent/releases.py``), which uses :class:`CensoringSurvival` from this module.

Conventions shared by all functions (numpy only, no pandas at runtime):

* ``time``: 1-D, finite, >= 0. ``event``: 1-D, values in {0, 1} (bool accepted).
* ``risk``: higher means an earlier event is expected.
* ``surv``: ``[n, K]`` survival probabilities at the increasing grid ``times`` ``[K]``. Between grid
  points S is a right-continuous step function: ``S(t) = surv[:, k]`` for ``times[k] <= t <
  times[k+1]``, ``S(t) = surv[:, -1]`` after the last grid time and ``S(t) = 1`` before the first
  (nobody has had an event before the first cut point of a discrete-time model).
* Ties are exact float equality. A pair (i, j) is *comparable* when i had the event and either
  ``t_i < t_j``, or ``t_i == t_j`` and j is censored (a patient censored at t is taken to outlive a
  death at t); two events at the same time are not comparable. Ties in the prediction count 0.5.
  These are the conventions of ``lifelines.utils.concordance_index``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "BrierStats",
    "CensoringSurvival",
    "ConcordanceStats",
    "MetricInputError",
    "NoComparablePairsError",
    "antolini_c",
    "antolini_stats",
    "brier_stats",
    "harrell_c",
    "harrell_stats",
    "integrated_brier_score",
    "survival_at",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.int64]


class MetricInputError(ValueError):
    """Bad input to a metric: the message names the argument and what is wrong with it."""


class NoComparablePairsError(MetricInputError):
    """A concordance index was asked for with zero comparable pairs (it is undefined)."""


# --------------------------------------------------------------------------- input validation


def _float_1d(name: str, values: ArrayLike) -> FloatArray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MetricInputError(f"{name} must be numeric: {exc}") from exc
    if arr.ndim != 1:
        raise MetricInputError(f"{name} must be 1-D, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise MetricInputError(
            f"{name} contains NaN or infinite values (first at index {int(np.argmax(bad))})"
        )
    return arr


def _time_event(time: ArrayLike, event: ArrayLike) -> tuple[FloatArray, BoolArray]:
    t = _float_1d("time", time)
    if (t < 0).any():
        raise MetricInputError(f"time must be >= 0 (index {int(np.argmax(t < 0))} is negative)")
    e = _float_1d("event", event)
    if e.shape != t.shape:
        raise MetricInputError(f"event has length {e.shape[0]} but time has length {t.shape[0]}")
    bad = (e != 0) & (e != 1)
    if bad.any():
        raise MetricInputError(f"event must be 0 or 1 (index {int(np.argmax(bad))} is {e[bad][0]})")
    return t, e == 1


def _grid(name: str, values: ArrayLike) -> FloatArray:
    g = _float_1d(name, values)
    if g.size == 0:
        raise MetricInputError(f"{name} must not be empty")
    if (np.diff(g) <= 0).any():
        raise MetricInputError(f"{name} must be strictly increasing")
    return g


def _surv_matrix(surv: ArrayLike, n: int, times: ArrayLike) -> tuple[FloatArray, FloatArray]:
    grid = _grid("times", times)
    try:
        s = np.asarray(surv, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MetricInputError(f"surv must be numeric: {exc}") from exc
    if s.shape != (n, grid.size):
        raise MetricInputError(
            f"surv must have shape (n, K) = ({n}, {grid.size}) to match time and times, "
            f"got {s.shape}"
        )
    if not np.isfinite(s).all():
        raise MetricInputError("surv contains NaN or infinite values")
    if ((s < 0) | (s > 1)).any():
        raise MetricInputError(
            f"surv must be probabilities in [0, 1] (found min {s.min():.6g}, max {s.max():.6g})"
        )
    return s, grid


def survival_at(surv: ArrayLike, times: ArrayLike, at: ArrayLike) -> FloatArray:
    """S_i(t) for each row of ``surv`` and each ``t`` in ``at`` by the module's step convention.

    Returns ``[n, len(at)]``; ``t`` before ``times[0]`` gives 1.
    """
    s = np.asarray(surv, dtype=np.float64)
    grid = np.asarray(times, dtype=np.float64)
    idx = np.searchsorted(grid, np.asarray(at, dtype=np.float64), side="right")
    padded = np.concatenate([np.ones((s.shape[0], 1)), s], axis=1)
    out: FloatArray = padded[:, idx]
    return out


# --------------------------------------------------------------------------- concordance


def _vector(name: str, v: ArrayLike, length: int) -> FloatArray:
    arr = _float_1d(name, v)
    if arr.size != length:
        raise MetricInputError(f"{name} must have length {length}, got {arr.size}")
    return arr


@dataclass(frozen=True)
class ConcordanceStats:
    """The pair counts behind a concordance index; ``concordant`` includes 0.5 per tie."""

    concordant: float
    comparable: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.concordant) and np.isfinite(self.comparable)):
            raise MetricInputError("ConcordanceStats fields must be finite")

    def value(self) -> float:
        """The concordance index; raises if nothing was comparable (the index is undefined)."""
        if self.comparable <= 0:
            raise NoComparablePairsError(
                "no comparable pairs: a concordance index needs at least one event "
                "followed by a longer (or tied censored) follow-up time"
            )
        return float(self.concordant / self.comparable)


def _dense_rank(values: FloatArray) -> IntArray:
    ranks: IntArray = np.unique(values, return_inverse=True)[1].astype(np.int64)
    return ranks


def _later_smaller_counts(rank: IntArray) -> tuple[IntArray, IntArray]:
    """For each position p: #{q > p: rank[q] < rank[p]} and #{q > p: rank[q] <= rank[p]}.

    Bottom-up merge sort, vectorised per level: at width w every pair (p, q) whose blocks of
    size w are siblings is counted with one binary search of p into q's sorted sibling block.
    Each level re-sorts a concatenation of already sorted runs with a stable (run-merging)
    sort, so the whole is O(n log n) up to the sort's run handling.
    """
    n = rank.size
    less = np.zeros(n, dtype=np.int64)
    leq = np.zeros(n, dtype=np.int64)
    pos = np.arange(n, dtype=np.int64)
    perm = pos.copy()  # positions ordered by (block, rank) for the current width
    w = 1
    while w < n:
        block = pos // w
        keys = block * n + rank
        perm = perm[np.argsort(keys[perm], kind="stable")]
        ordered = keys[perm]
        left = (block % 2 == 0) & ((block + 1) * w < n)
        p = pos[left]
        sibling = block[left] + 1
        start = sibling * w
        probe = sibling * n + rank[p]
        less[p] += np.searchsorted(ordered, probe, side="left") - start
        leq[p] += np.searchsorted(ordered, probe, side="right") - start
        w *= 2
    return less, leq


def _tied_pairs(*keys: FloatArray) -> int:
    """Number of unordered pairs of rows that agree on every key."""
    if keys[0].size == 0:
        return 0
    counts = np.unique(np.stack(keys, axis=1), axis=0, return_counts=True)[1]
    return int((counts * (counts - 1) // 2).sum())


def _concordance_counts(
    time: FloatArray, event: BoolArray, score: FloatArray
) -> tuple[float, float]:
    """(concordant + 0.5 ties, comparable) where a higher ``score`` should mean an earlier event.

    Rows are ordered by time, events before censorings at a tied time, and tied events by
    ascending score. Then every comparable partner of an event lies after it, and the only
    non-comparable rows after it are later events at the same time; their ascending order means
    they never count as "smaller", so only their ties and their pairs need subtracting.
    """
    n = time.size
    if not event.any():
        return 0.0, 0.0
    order = np.lexsort((score, ~event, time))
    t, e, s = time[order], event[order], score[order]
    less, leq = _later_smaller_counts(_dense_rank(s))
    after = np.arange(n - 1, -1, -1, dtype=np.int64)  # n - 1 - p
    ev_t, ev_s = t[e], s[e]
    comparable = int(after[e].sum()) - _tied_pairs(ev_t)
    ties = int((leq - less)[e].sum()) - _tied_pairs(ev_t, ev_s)
    concordant = int(less[e].sum()) + 0.5 * ties
    return float(concordant), float(comparable)


def harrell_stats(time: ArrayLike, event: ArrayLike, risk: ArrayLike) -> ConcordanceStats:
    """Harrell's concordance pair counts in O(n log n)."""
    t, e = _time_event(time, event)
    r = _float_1d("risk", risk)
    if r.shape != t.shape:
        raise MetricInputError(f"risk has length {r.shape[0]} but time has length {t.shape[0]}")
    return ConcordanceStats(*_concordance_counts(t, e, r))


def harrell_c(time: ArrayLike, event: ArrayLike, risk: ArrayLike) -> float:
    """Harrell's C-index (equals ``lifelines.utils.concordance_index(time, -risk, event)``)."""
    return harrell_stats(time, event, risk).value()


def antolini_stats(
    time: ArrayLike, event: ArrayLike, surv: ArrayLike, times: ArrayLike
) -> ConcordanceStats:
    """Antolini's time-dependent concordance counts (Antolini et al., Stat Med 2005).

    A comparable pair (i, j) (module conventions) is concordant when ``S_i(t_i) < S_j(t_i)``,
    with S by the step convention and 0.5 for equal values. With non-crossing curves this equals
    Harrell's C of any risk score that orders the curves.

    Rows are split into bands by the grid cell their time falls in; inside a band every curve is
    read at the same grid column, so within-band pairs are Harrell counts of ``-S[:, band]``, and
    an event against a later band is one binary search into that column sorted. O(K n log n).
    """
    t, e = _time_event(time, event)
    s, grid = _surv_matrix(surv, t.size, times)
    padded = np.concatenate([np.ones((t.size, 1)), s], axis=1)  # column 0: S = 1 before grid
    band = np.searchsorted(grid, t, side="right")
    concordant = 0.0
    comparable = 0.0
    for b in np.unique(band[e]):
        col = padded[:, b]
        in_band = band == b
        c, m = _concordance_counts(t[in_band], e[in_band], -col[in_band])
        later = np.sort(col[band > b])
        ev = col[in_band & e]
        lo = np.searchsorted(later, ev, side="left")
        hi = np.searchsorted(later, ev, side="right")
        concordant += c + float((later.size - hi).sum()) + 0.5 * float((hi - lo).sum())
        comparable += m + float(ev.size * later.size)
    return ConcordanceStats(concordant, comparable)


def antolini_c(time: ArrayLike, event: ArrayLike, surv: ArrayLike, times: ArrayLike) -> float:
    """Antolini's time-dependent C-index of predicted survival curves."""
    return antolini_stats(time, event, surv, times).value()


# --------------------------------------------------------------------------- censoring KM


def _censoring_counts(
    time: ArrayLike, event: ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Censoring and at-risk counts at each observed time, for the censoring Kaplan–Meier.

    For cut k (the unique observed times; interval ``(cut[k-1], cut[k]]``, the first one open
    to the left): ``censored[k]`` counts censorings in the interval and ``at_risk[k]`` counts
    rows with ``time > cut[k-1]`` minus the events in the interval (events at a tied time come
    before censorings, as in scikit-survival's reverse KM). Returns ``(cuts, censored, at_risk)``.
    """
    t, e = _time_event(time, event)
    cuts = np.unique(t)
    cell = np.searchsorted(cuts, t, side="left")  # t in (cuts[k-1], cuts[k]] -> k
    inside = cell < cuts.size
    censored = np.bincount(cell[inside & ~e], minlength=cuts.size).astype(np.float64)
    events = np.bincount(cell[inside & e], minlength=cuts.size).astype(np.float64)
    per_cell = np.bincount(cell, minlength=cuts.size + 1)
    entering = np.cumsum(per_cell[::-1])[::-1][: cuts.size].astype(np.float64)
    return cuts, censored, entering - events


@dataclass(frozen=True, eq=False)
class CensoringSurvival:
    """Kaplan–Meier estimate G of the censoring survival function, a right-continuous step.

    ``values[k] = G(times[k])``; G = 1 before ``times[0]`` and stays at ``values[-1]`` after the
    last time (constant extrapolation). Estimate it on the *training* data (``from_data``), or
    in the federation from summed consortium counts (``from_counts``).
    """

    times: FloatArray
    values: FloatArray

    def __post_init__(self) -> None:
        times = _float_1d("CensoringSurvival.times", self.times)
        values = _float_1d("CensoringSurvival.values", self.values)
        if times.shape != values.shape:
            raise MetricInputError("CensoringSurvival times and values must have the same length")
        if (np.diff(times) <= 0).any():
            raise MetricInputError("CensoringSurvival.times must be strictly increasing")
        if ((values < 0) | (values > 1)).any() or (np.diff(values) > 0).any():
            raise MetricInputError("CensoringSurvival.values must be non-increasing in [0, 1]")
        times.setflags(write=False)
        values.setflags(write=False)
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "values", values)

    @classmethod
    def from_data(cls, time: ArrayLike, event: ArrayLike) -> CensoringSurvival:
        """Reverse Kaplan–Meier on raw rows (same estimate as sksurv's, ``reverse=True``)."""
        return cls.from_counts(*_censoring_counts(time, event))

    @classmethod
    def from_counts(
        cls, cut_times: ArrayLike, censored: ArrayLike, at_risk: ArrayLike
    ) -> CensoringSurvival:
        """KM from censoring and at-risk counts per cut (the site's consortium curve comes from
        the noised statistics release this way, ``site_agent/releases.py``).

        Noised consortium totals must be post-processed into range (0 <= censored <= at_risk)
        by the caller; they are rejected here rather than silently repaired.
        """
        cuts = _grid("cut_times", cut_times)
        c = _vector("censored", censored, cuts.size)
        r = _vector("at_risk", at_risk, cuts.size)
        if (c < 0).any() or (c > r).any():
            raise MetricInputError("censoring counts must satisfy 0 <= censored <= at_risk")
        hazard = np.divide(c, r, out=np.zeros_like(c), where=r > 0)
        return cls(cuts, np.cumprod(1.0 - hazard).astype(np.float64))

    def __call__(self, t: ArrayLike) -> FloatArray:
        """G(t), right-continuous: includes a drop at ``t`` itself."""
        idx = np.searchsorted(self.times, np.asarray(t, dtype=np.float64), side="right")
        out: FloatArray = np.concatenate([[1.0], self.values])[idx]
        return out

    def left_limit(self, t: ArrayLike) -> FloatArray:
        """G(t-), the probability of being uncensored just before ``t`` (IPCW weight for a case)."""
        idx = np.searchsorted(self.times, np.asarray(t, dtype=np.float64), side="left")
        out: FloatArray = np.concatenate([[1.0], self.values])[idx]
        return out


# --------------------------------------------------------------------------- Brier score


@dataclass(frozen=True, eq=False)
class BrierStats:
    """Per-evaluation-time sums of IPCW-weighted squared errors over ``count`` patients."""

    sums: FloatArray
    count: float
    times: FloatArray = field(repr=True)

    def __post_init__(self) -> None:
        sums = _float_1d("BrierStats.sums", self.sums)
        times = _grid("BrierStats.times", self.times)
        if sums.shape != times.shape:
            raise MetricInputError("BrierStats sums and times must have the same length")
        if not np.isfinite(self.count):
            raise MetricInputError("BrierStats.count must be finite")
        sums.setflags(write=False)
        times.setflags(write=False)
        object.__setattr__(self, "sums", sums)
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "count", float(self.count))

    def brier(self) -> FloatArray:
        """The Brier score at each evaluation time."""
        if self.count <= 0:
            raise MetricInputError("BrierStats over zero patients: the Brier score is undefined")
        out: FloatArray = self.sums / self.count
        return out

    def integrated(self) -> float:
        """Trapezoid integral of the Brier curve over the times, divided by their span."""
        if self.times.size < 2:
            raise MetricInputError("the integrated Brier score needs at least two eval_times")
        b = self.brier()
        area = float((np.diff(self.times) * (b[1:] + b[:-1]) / 2.0).sum())
        return area / float(self.times[-1] - self.times[0])


def brier_stats(
    time: ArrayLike,
    event: ArrayLike,
    surv: ArrayLike,
    times: ArrayLike,
    eval_times: ArrayLike,
    censoring: CensoringSurvival,
) -> BrierStats:
    """IPCW Brier sums (Graf et al., Stat Med 1999) at each of ``eval_times``.

    At t: an event with ``t_i <= t`` adds ``S_i(t)^2 / G(t_i-)``; a patient with ``t_i > t`` adds
    ``(1 - S_i(t))^2 / G(t)``; censored before or at t adds 0. The mean is over all n.
    scikit-survival divides cases by ``G(t_i)`` instead of ``G(t_i-)``; the two differ only for an
    event at a time where the training data also has a censoring.
    """
    t, e = _time_event(time, event)
    s, grid = _surv_matrix(surv, t.size, times)
    at = _grid("eval_times", eval_times)
    if not isinstance(censoring, CensoringSurvival):
        raise MetricInputError("censoring must be a CensoringSurvival")
    g_t = censoring(at)
    if (g_t <= 0).any():
        bad = float(at[np.argmax(g_t <= 0)])
        raise MetricInputError(
            f"censoring survival G is 0 at eval time {bad:g}: IPCW is undefined there; "
            "use eval_times below the last censoring in the training data"
        )
    g_case = censoring.left_limit(t)
    w_case = np.divide(1.0, g_case, out=np.zeros_like(g_case), where=e & (g_case > 0))
    s_at = survival_at(s, grid, at)
    case = (t[:, None] <= at[None, :]) & e[:, None]
    control = t[:, None] > at[None, :]
    contrib = np.where(case, s_at**2 * w_case[:, None], 0.0)
    contrib += np.where(control, (1.0 - s_at) ** 2 / g_t[None, :], 0.0)
    return BrierStats(contrib.sum(axis=0), float(t.size), at)


def integrated_brier_score(
    time: ArrayLike,
    event: ArrayLike,
    surv: ArrayLike,
    times: ArrayLike,
    eval_times: ArrayLike,
    censoring: CensoringSurvival,
) -> float:
    """IPCW integrated Brier score over ``eval_times`` (trapezoid rule / span)."""
    return brier_stats(time, event, surv, times, eval_times, censoring).integrated()
