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

from survival.brier import BrierStats, CensoringSurvival, brier_stats, integrated_brier_score
from survival.concordance import (
    ConcordanceStats,
    antolini_c,
    antolini_stats,
    harrell_c,
    harrell_stats,
)
from survival.metric_inputs import MetricInputError, NoComparablePairsError, survival_at

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
