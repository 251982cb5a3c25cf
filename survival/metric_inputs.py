"""The input checks every survival metric shares (`survival.metrics` is the public surface).

One place says what a metric accepts — 1-D finite times >= 0, events in {0, 1}, an increasing
grid, an [n, K] survival matrix in [0, 1] — so that every metric rejects the same bad input with
the same message naming the argument.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.int64]


class MetricInputError(ValueError):
    """Bad input to a metric: the message names the argument and what is wrong with it."""


class NoComparablePairsError(MetricInputError):
    """A concordance index was asked for with zero comparable pairs (it is undefined)."""


# --------------------------------------------------------------------------- input validation


def float_1d(name: str, values: ArrayLike) -> FloatArray:
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


def time_event(time: ArrayLike, event: ArrayLike) -> tuple[FloatArray, BoolArray]:
    t = float_1d("time", time)
    if (t < 0).any():
        raise MetricInputError(f"time must be >= 0 (index {int(np.argmax(t < 0))} is negative)")
    e = float_1d("event", event)
    if e.shape != t.shape:
        raise MetricInputError(f"event has length {e.shape[0]} but time has length {t.shape[0]}")
    bad = (e != 0) & (e != 1)
    if bad.any():
        raise MetricInputError(f"event must be 0 or 1 (index {int(np.argmax(bad))} is {e[bad][0]})")
    return t, e == 1


def grid_values(name: str, values: ArrayLike) -> FloatArray:
    g = float_1d(name, values)
    if g.size == 0:
        raise MetricInputError(f"{name} must not be empty")
    if (np.diff(g) <= 0).any():
        raise MetricInputError(f"{name} must be strictly increasing")
    return g


def surv_matrix(surv: ArrayLike, n: int, times: ArrayLike) -> tuple[FloatArray, FloatArray]:
    grid = grid_values("times", times)
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


def vector_of(name: str, v: ArrayLike, length: int) -> FloatArray:
    arr = float_1d(name, v)
    if arr.size != length:
        raise MetricInputError(f"{name} must have length {length}, got {arr.size}")
    return arr
