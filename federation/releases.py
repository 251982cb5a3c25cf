"""The three kinds of release a site makes in a run, defined once for both sides.

Each release is a float vector that leaves the site only as an input to a secure-aggregation
session, so both the site (which builds, noises, quantises and charges it) and the coordinator
(which decodes the sum) must agree on its length, its fixed-point encoding and its L2 sensitivity.

- statistics: consortium feature moments and per-interval event / at-risk counts (once per run);
- update: a model delta after local DP-SGD (privacy comes from DP-SGD itself);
- metrics: sufficient statistics of the evaluation metrics on the local held-out split.

Statistics and metrics are Gaussian mechanisms: the site adds N(0, (σ·Δ)²) to each coordinate,
where Δ is the L2 sensitivity below under adding or removing one patient, and charges (σ, q=1,
steps=1) to its ledger.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from secagg.quantize import QuantizationConfig

from survival.schema import FeatureSchema, NumericFeature, Standardization

# A site's cohort is capped so that every release has a public bound (sites with more rows
# subsample): it sets the fixed-point range of the statistics and the sensitivity of the metrics.
MAX_COHORT = 200_000
MAX_SITES = 64


class Purpose(StrEnum):
    STATS = "stats"
    UPDATE = "update"
    METRICS = "metrics"


@dataclass(frozen=True)
class StatsLayout:
    """[count, Σu_j, Σu_j², events_k, at_risk_k] with every encoded column u_j scaled to [0, 1]
    by public bounds, so that one patient moves each coordinate by at most one."""

    n_columns: int
    n_intervals: int

    @property
    def length(self) -> int:
        return 1 + 2 * self.n_columns + 2 * self.n_intervals

    @property
    def sensitivity(self) -> float:
        # one patient: count 1, each scaled sum and square ≤ 1, one event, at risk in ≤ K intervals
        return math.sqrt(1 + 2 * self.n_columns + 1 + self.n_intervals)

    def quantization(self, n_participants: int) -> QuantizationConfig:
        bound = float(2 * MAX_COHORT)  # counts plus generous room for the Gaussian noise
        return QuantizationConfig(
            clip_norm=bound * math.sqrt(self.length),
            coord_bound=bound,
            scale=8.0,
            max_participants=max(n_participants, 2),
        )


@dataclass(frozen=True)
class UpdateLayout:
    """A flat model delta; its quantisation comes from the plan's secagg section."""

    n_parameters: int
    clip_norm: float
    coord_bound: float
    scale_bits: int

    @property
    def length(self) -> int:
        return self.n_parameters

    def quantization(self, n_participants: int) -> QuantizationConfig:
        return QuantizationConfig(
            clip_norm=self.clip_norm,
            coord_bound=self.coord_bound,
            scale=float(2**self.scale_bits),
            max_participants=max(n_participants, 2),
        )


@dataclass(frozen=True)
class MetricsLayout:
    """[patients, events, brier_sum, concordant, comparable] on the held-out split.

    Harrell's pair counts have sensitivity O(n) (one added patient joins up to n pairs), so their DP
    release at hospital scale is pure noise. The federated estimate is instead *windowed*: patients
    are sorted by time (ties broken by a keyed hash) and each patient with an event is compared with
    the `window` patients at the next sort positions, the pair counting when the partner's time is
    strictly later. Inserting one patient k at position p changes the windows of exactly the
    `window` patients before p (each loses at most its last partner and gains k) and adds k's own
    window: |Δconcordant|, |Δcomparable| ≤ 2·window, whatever the ties. The Brier term of a patient
    is its mean IPCW squared error over the evaluation times with weights clipped at `max_weight`,
    divided by max_weight so that it lies in [0, 1]; the censoring curve comes from the consortium
    statistics, not from local data, so one patient moves only its own term.
    """

    window: int = 10
    max_weight: float = 10.0

    @property
    def length(self) -> int:
        return 5

    @property
    def sensitivity(self) -> float:
        pairs = 2.0 * self.window
        return math.sqrt(1.0 + 1.0 + 1.0 + pairs**2 + pairs**2)

    def quantization(self, n_participants: int) -> QuantizationConfig:
        bound = float(2 * MAX_COHORT * self.window)
        return QuantizationConfig(
            clip_norm=bound * math.sqrt(self.length),
            coord_bound=bound,
            scale=4.0,
            max_participants=max(n_participants, 2),
        )


def encoded_bounds(schema: FeatureSchema) -> tuple[np.ndarray, np.ndarray]:
    """Public (low, high) of every encoded design-matrix column: a numeric value column takes its
    clinical bounds, dummies and missing indicators are 0/1."""
    low: list[float] = []
    high: list[float] = []
    for feature in schema.features:
        for index, _ in enumerate(feature.encoded_names()):
            if isinstance(feature, NumericFeature) and index == 0:
                low.append(feature.min)
                high.append(feature.max)
            else:
                low.append(0.0)
                high.append(1.0)
    return np.asarray(low), np.asarray(high)


def stats_vector(
    raw: np.ndarray, events: np.ndarray, at_risk: np.ndarray, schema: FeatureSchema
) -> np.ndarray:
    """A site's noiseless statistics release (before Gaussian noise): see StatsLayout."""
    low, high = encoded_bounds(schema)
    if raw.ndim != 2 or raw.shape[1] != low.size:
        raise ValueError(f"design matrix has shape {raw.shape}, expected (n, {low.size})")
    scaled = np.clip((raw - low) / (high - low), 0.0, 1.0)
    return np.concatenate(
        [[float(raw.shape[0])], scaled.sum(axis=0), (scaled * scaled).sum(axis=0), events, at_risk]
    ).astype(np.float64)


@dataclass(frozen=True)
class ConsortiumStats:
    """What the coordinator learns from the statistics release: noised consortium totals."""

    count: float
    standardization: Standardization
    events: np.ndarray
    at_risk: np.ndarray


def decode_stats(total: np.ndarray, schema: FeatureSchema, n_intervals: int) -> ConsortiumStats:
    """Turn the (noised) summed statistics vector into standardisation and hazard counts."""
    low, high = encoded_bounds(schema)
    columns = low.size
    layout = StatsLayout(columns, n_intervals)
    if total.shape != (layout.length,):
        raise ValueError(f"statistics vector has shape {total.shape}, expected ({layout.length},)")
    count = max(float(total[0]), 1.0)
    sums = total[1 : 1 + columns]
    sums_sq = total[1 + columns : 1 + 2 * columns]
    mean_u = np.clip(sums / count, 0.0, 1.0)
    var_u = np.clip(sums_sq / count - mean_u**2, 0.0, None)
    means = low + (high - low) * mean_u
    stds = (high - low) * np.sqrt(var_u)
    stds = np.where(stds > 1e-6 * (high - low), stds, 1.0)
    events = np.clip(total[1 + 2 * columns : 1 + 2 * columns + n_intervals], 0.0, None)
    at_risk = np.clip(total[1 + 2 * columns + n_intervals :], 0.0, None)
    at_risk = np.maximum.accumulate(at_risk[::-1])[::-1]  # at-risk counts never increase with time
    events = np.minimum(events, at_risk)
    return ConsortiumStats(
        count=count,
        standardization=Standardization(means=means.tolist(), stds=stds.tolist()),
        events=events,
        at_risk=at_risk,
    )
