"""Concordance on one data set: Harrell's C and Antolini's time-dependent C^td, as pair counts
(`survival.metrics` is the public surface; its docstring states the tie conventions)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from survival.metric_inputs import (
    BoolArray,
    FloatArray,
    IntArray,
    MetricInputError,
    NoComparablePairsError,
    float_1d,
    surv_matrix,
    time_event,
)

# --------------------------------------------------------------------------- concordance


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
    t, e = time_event(time, event)
    r = float_1d("risk", risk)
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
    t, e = time_event(time, event)
    s, grid = surv_matrix(surv, t.size, times)
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
