"""The IPCW Brier score on one data set and the censoring Kaplan–Meier its weights come from
(`survival.metrics` is the public surface)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from survival.metric_inputs import (
    FloatArray,
    MetricInputError,
    float_1d,
    grid_values,
    surv_matrix,
    survival_at,
    time_event,
    vector_of,
)

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
    t, e = time_event(time, event)
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
        times = float_1d("CensoringSurvival.times", self.times)
        values = float_1d("CensoringSurvival.values", self.values)
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
        cuts = grid_values("cut_times", cut_times)
        c = vector_of("censored", censored, cuts.size)
        r = vector_of("at_risk", at_risk, cuts.size)
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
        sums = float_1d("BrierStats.sums", self.sums)
        times = grid_values("BrierStats.times", self.times)
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
    t, e = time_event(time, event)
    s, grid = surv_matrix(surv, t.size, times)
    at = grid_values("eval_times", eval_times)
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
