"""The public time grid of a discrete-time survival model.

Cut points come from the run plan (a fixed list, or equal width up to a horizon) and are never
derived from private event times: quantiles of a hospital's event times would leak them.

Convention. With cuts c_0 < c_1 < … < c_{K-1} (c_{K-1} is the horizon), interval k is
(c_{k-1}, c_k], and interval 0 is [0, c_0]. So a time exactly on a cut belongs to the interval
that *ends* there, time 0 belongs to interval 0, and a time beyond the horizon is recorded as
censored in the last interval (the patient survived the whole grid; an event after the horizon is
not an event the model can see). Censored patients are taken to have survived their whole interval
(see `survival.loss`), so `interval_counts` puts them in the at-risk set of that interval.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator


class TimeGrid(BaseModel):
    """Strictly increasing positive cut points; the last one is the horizon."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cuts: list[float] = Field(min_length=1, max_length=1000)

    @field_validator("cuts")
    @classmethod
    def _increasing(cls, cuts: list[float]) -> list[float]:
        if not all(math.isfinite(c) for c in cuts):
            raise ValueError("cut points must be finite")
        if cuts[0] <= 0:
            raise ValueError(f"cut points must be positive, the first is {cuts[0]}")
        if any(b <= a for a, b in itertools.pairwise(cuts)):
            raise ValueError("cut points must be strictly increasing")
        return cuts

    @classmethod
    def equal_width(cls, horizon: float, n_intervals: int) -> TimeGrid:
        """`n_intervals` intervals of width horizon / n_intervals."""
        if not (math.isfinite(horizon) and horizon > 0):
            raise ValueError(f"horizon must be positive and finite, got {horizon}")
        if n_intervals < 1:
            raise ValueError(f"n_intervals must be at least 1, got {n_intervals}")
        width = horizon / n_intervals
        cuts = [width * (k + 1) for k in range(n_intervals)]
        cuts[-1] = float(horizon)
        return cls(cuts=cuts)

    @property
    def n_intervals(self) -> int:
        return len(self.cuts)

    @property
    def horizon(self) -> float:
        return self.cuts[-1]

    def widths(self) -> np.ndarray:
        """Interval lengths (interval 0 starts at time 0)."""
        return np.diff(np.concatenate([[0.0], np.asarray(self.cuts)]))

    def discretize(
        self, time: Sequence[float] | np.ndarray, event: Sequence[float] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(interval index int64, event float32) per patient, with the module's convention."""
        t, e = _check_outcomes(time, event)
        index = np.searchsorted(np.asarray(self.cuts), t, side="left")
        beyond = index >= self.n_intervals
        index = np.where(beyond, self.n_intervals - 1, index)
        e = np.where(beyond, 0.0, e)
        return index.astype(np.int64), e.astype(np.float32)

    def interval_counts(
        self, time: Sequence[float] | np.ndarray, event: Sequence[float] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(events, at risk) per interval, float64: the sufficient statistics of the baseline.

        at_risk[k] counts patients whose discretised interval is ≥ k, i.e. alive at the start of
        interval k; events[k] counts events in interval k. events / at_risk is then the maximum-
        likelihood baseline hazard under the loss's convention.
        """
        index, e = self.discretize(time, event)
        k = self.n_intervals
        events = np.bincount(index, weights=e.astype(np.float64), minlength=k)
        in_interval = np.bincount(index, minlength=k).astype(np.float64)
        at_risk = np.cumsum(in_interval[::-1])[::-1]
        return events, at_risk.copy()


def _check_outcomes(
    time: Sequence[float] | np.ndarray, event: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event, dtype=np.float64)
    if t.ndim != 1 or e.shape != t.shape:
        raise ValueError(f"time and event must be 1-D of equal length, got {t.shape}, {e.shape}")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError("times must be finite and non-negative")
    if not np.all((e == 0) | (e == 1)):
        raise ValueError("event must be 0 (censored) or 1 (event)")
    return t, e
