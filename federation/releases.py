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
# A numeric column's scaled variance is never taken below this (std ≥ 1/30 of its public range):
# noise must not produce a near-zero scale that multiplies a feature by orders of magnitude.
MIN_NUMERIC_VARIANCE = (1.0 / 30.0) ** 2


class Purpose(StrEnum):
    """Which of the three releases of a run a vector is: the one name the engine's phases, the
    ledger's purpose column, the session context and the wire (`federation/tasks.py`) share."""

    STATS = "stats"
    UPDATE = "update"
    METRICS = "metrics"


@dataclass(frozen=True)
class StatsLayout:
    """[count, Σu_j, Σu_v², events_k, w·at_risk_k]: every encoded column scaled to u ∈ [0, 1] by
    public bounds; numeric value columns v *centred*, their sums as Σ2(u_v − ½) and squares as
    Σ4(u_v − ½)² (a 0/1 column's square is itself, so it has none).

    Sensitivity is spent where precision matters. One patient adds 1 to the count; its encoded
    row has L2² ≤ `row_norm_sq` (one per numeric value and missing indicator, one per categorical
    feature since its dummies are one-hot); one per numeric square; one event. Centring costs
    nothing (2(u − ½) ∈ [−1, 1] and 4(u − ½)² ∈ [0, 1] move by at most 1, like u and u²) but the
    decoded mean gets half the noise and the second moment a quarter: the variance of a feature
    like age, whose spread is a seventh of its public range, is then estimated to ~6% instead of
    ~30% (σ = 3, 5 000 patients). At-risk counts are large (the cohort at the start) and a
    patient is at risk in up to K intervals, so they are released scaled by w = 1/√K: their L2
    contribution is 1 instead of √K, and their noise is √K times larger relative to counts that
    are in the thousands.
    """

    n_columns: int
    numeric_columns: tuple[int, ...]
    row_norm_sq: int
    n_intervals: int

    @classmethod
    def for_schema(cls, schema: FeatureSchema, n_intervals: int) -> StatsLayout:
        """The layout of a plan's statistics release, from public plan fields alone, so the
        coordinator and every site derive the same length and sensitivity."""
        numeric: list[int] = []
        row_norm_sq = 0
        index = 0
        for feature in schema.features:
            names = feature.encoded_names()
            if isinstance(feature, NumericFeature):
                numeric.append(index)
                row_norm_sq += len(names)  # value and, if optional, its missing indicator
            else:
                row_norm_sq += 1  # one-hot dummies (missing indicator included)
            index += len(names)
        return cls(index, tuple(numeric), row_norm_sq, n_intervals)

    @property
    def at_risk_weight(self) -> float:
        """w = 1/√K: at-risk counts are scaled down so that one patient at risk in all K
        intervals adds 1 to the L2 sensitivity, not √K."""
        return 1.0 / math.sqrt(max(self.n_intervals, 1))

    @property
    def length(self) -> int:
        """Coordinates of the release (the secure-aggregation session's vector length)."""
        return 1 + self.n_columns + len(self.numeric_columns) + 2 * self.n_intervals

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity Δ under adding or removing one patient: the site adds N(0, (σΔ)²)."""
        squares = len(self.numeric_columns)
        at_risk = self.n_intervals * self.at_risk_weight**2
        return math.sqrt(1 + self.row_norm_sq + squares + 1 + at_risk)

    def quantization(self, n_participants: int) -> QuantizationConfig:
        """Fixed-point encoding wide enough for counts up to MAX_COHORT plus their noise, so a
        sum of n noised releases never wraps modulo 2^32."""
        bound = float(2 * MAX_COHORT)  # counts plus generous room for the Gaussian noise
        return QuantizationConfig(
            clip_norm=bound * math.sqrt(self.length),
            coord_bound=bound,
            scale=8.0,
            max_participants=max(n_participants, 2),
        )


@dataclass(frozen=True)
class UpdateLayout:
    """A flat model delta; its quantisation comes from the plan's secagg section.

    Weighted (local mode, `training.aggregation = "weighted"`): [w·delta, w] with the site's
    weight w = its own DP-noised cohort size over the consortium's, in [0, 1]; delta is clipped
    to `clip_norm` before weighting, so the whole vector stays within `clip_norm + 1` and the
    coordinator divides the summed deltas by the summed weights (FedAvg weighted by cohort).
    """

    n_parameters: int
    clip_norm: float
    coord_bound: float
    scale_bits: int
    weighted: bool = False

    @property
    def length(self) -> int:
        """Coordinates of the release: one per model parameter (and the weight, if weighted)."""
        return self.n_parameters + int(self.weighted)

    def weighted_release(self, delta: np.ndarray, weight: float) -> np.ndarray:
        """[w·clip(delta), w]: what a site releases under weighted FedAvg."""
        delta = np.asarray(delta, dtype=np.float64)
        norm = float(np.linalg.norm(delta))
        if norm > self.clip_norm:
            delta = delta * (self.clip_norm / norm)
        w = min(max(float(weight), 0.0), 1.0)
        return np.concatenate([delta * w, [w]])

    def quantization(self, n_participants: int) -> QuantizationConfig:
        """The plan's `[secagg]` clipping and scale: an update's range is the plan's choice, not
        a public bound like the counts of the other two releases."""
        return QuantizationConfig(
            clip_norm=self.clip_norm + (1.0 if self.weighted else 0.0),
            coord_bound=self.coord_bound,
            scale=float(2**self.scale_bits),
            max_participants=max(n_participants, 2),
        )


@dataclass(frozen=True)
class MetricsLayout:
    """[patients, events, brier_sum, concordant, comparable, observed, expected] on the held-out
    split.

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

    Calibration in the large (observed / expected events, `oe_ratio`). `expected` is Σ min(H_i,
    `expected_cap`) / expected_cap, with H_i the model's *discrete* cumulative hazard over the
    intervals patient i was at risk in, Σ_{j ≤ k_i} h_ij (h_ij = 1 − S_ij / S_i,j−1 from the
    predicted curve on the plan's grid; k_i is the patient's interval by `TimeGrid.discretize`, a
    time beyond the horizon in the last one). Why the discrete sum and not −log S(t_i): the model
    is trained with the grid's convention (an event anywhere in interval k, a censored patient at
    risk through all of it), under which Σ_i Σ_{j ≤ k_i} h_ij is the compensator of the event
    count, so a nonparametric fit has O/E = 1 exactly on its own data; −log S = Σ −log(1 − h)
    exceeds it by ≈ Σh²/2, and interpolating within the interval by ≈ half an interval's hazard per
    patient (~5 % at the demo's grid), both reading a calibrated model as mis-calibrated. The cap
    (public, default 4) bounds one patient's term by 1; it costs little: under a calibrated model
    the cumulative hazard at an event time is ~Exp(1), so capping at 4 loses at most
    E[(X − 4)⁺] = e⁻⁴ ≈ 1.8 % of an event per patient followed to its event (less with censoring),
    where a cap of 2 would lose 13.5 %. `observed` is the events
    *at or before the horizon* (`TimeGrid.discretize`'s: an event after it is censored there),
    because H stops at the horizon; `events` keeps counting every held-out event, as before.

    Noise is allocated by weight: the site releases `weights ⊙ values` (L2 sensitivity ≤ 1 by
    construction, see `sensitivity`) plus N(0, σ²), and the coordinator divides the sum by the
    weights. Counts of patients and events are in the hundreds and need little of the budget; the
    Brier sum (per patient at most 1) and the pair counts (at most 2·window) take most of the rest,
    and calibration under a tenth (0.13² + 0.26² of 0.96): O and E split it 1 : 2, which minimises
    the noise of O/E (the variance (s_O² + cap²·s_E²)/E², s the decoded coordinates' stds, is
    least under a fixed budget at share_E / share_O = √cap).
    Against the five-coordinate layout (0.1, 0.1, 0.45, 0.61, 0.61), C and IBS keep ~95 % of
    their precision (noise std × 1.05).
    """

    window: int = 10
    max_weight: float = 4.0
    expected_cap: float = 4.0
    # shares of the unit L2 budget: patients, events, Brier sum, concordant, comparable,
    # observed, expected
    shares: tuple[float, float, float, float, float, float, float] = (
        0.1,
        0.1,
        0.43,
        0.58,
        0.58,
        0.13,
        0.26,
    )

    @property
    def length(self) -> int:
        """Coordinates of the release: patients, events, Brier sum, concordant, comparable,
        observed, expected."""
        return len(self.shares)

    @property
    def raw_sensitivity(self) -> tuple[float, ...]:
        """How far one patient moves each unweighted coordinate (2·window for the pair counts;
        the Brier and expected terms are already divided by their caps)."""
        pairs = 2.0 * self.window
        return (1.0, 1.0, 1.0, pairs, pairs, 1.0, 1.0)

    @property
    def weights(self) -> np.ndarray:
        """share / raw sensitivity per coordinate: the weighted release has L2 sensitivity ≤ 1,
        and each coordinate gets the share of the noise budget its precision needs."""
        weights: np.ndarray = np.asarray(self.shares) / np.asarray(self.raw_sensitivity)
        return weights

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of the weighted release (≤ 1)."""
        return math.sqrt(sum(share * share for share in self.shares))

    def encode(self, values: np.ndarray) -> np.ndarray:
        """What a site releases: its raw metric sums times `weights` (noise is added after)."""
        weighted: np.ndarray = np.asarray(values, dtype=np.float64) * self.weights
        return weighted

    def decode(self, weighted_sum: np.ndarray) -> np.ndarray:
        """The consortium's raw metric sums from the summed weighted release."""
        values: np.ndarray = np.asarray(weighted_sum, dtype=np.float64) / self.weights
        return values

    def quantization(self, n_participants: int) -> QuantizationConfig:
        """Fixed-point encoding of the weighted release, wide enough that a sum never wraps."""
        # every weighted coordinate is ≤ 0.61·MAX_COHORT (shares ≤ 0.61, per-patient terms ≤ 1
        # after weighting), so MAX_COHORT leaves ample room for the noise
        bound = float(MAX_COHORT)
        return QuantizationConfig(
            clip_norm=bound * math.sqrt(self.length),
            coord_bound=bound,
            scale=64.0,
            max_participants=max(n_participants, 2),
        )


def metrics_from_sums(sums: np.ndarray, layout: MetricsLayout) -> dict[str, float]:
    """Consortium metric estimates from the summed, noised metrics release (`layout.decode` of it).

    `c_windowed` is concordance among each event and the next `layout.window` patients in time,
    not Harrell's C: neighbours in time are the hard pairs, so it runs well below it (on FLCHAIN's
    test set the same risk score gives 0.62 windowed, 0.79 Harrell). Compare it across rounds.
    `ibs` uses IPCW weights clipped at `layout.max_weight`, so it is biased low. `oe_ratio` is
    observed / expected events up to the horizon (1 = calibrated in the large; > 1: the model
    predicts too few events); `expected` is in events (the release's sum times the cap).
    """
    patients, events, brier, concordant, comparable, observed, expected_scaled = (
        float(v) for v in sums
    )
    expected = expected_scaled * layout.expected_cap
    out = {
        "patients": round(patients, 1),
        "events": round(events, 1),
        "observed": round(observed, 1),
        "expected": round(expected, 1),
    }
    if patients >= 1:
        out["ibs"] = _clip01(brier * layout.max_weight / patients)
    if comparable >= 1:
        out["c_windowed"] = _clip01(concordant / comparable)
    if expected > 0:
        out["oe_ratio"] = max(observed / expected, 0.0)
    return out


def _clip01(value: float) -> float:
    return float(min(1.0, max(0.0, value))) if math.isfinite(value) else float("nan")


def encoded_bounds(schema: FeatureSchema) -> tuple[np.ndarray, np.ndarray]:
    """Public (low, high) of every encoded design-matrix column: a numeric value column takes its
    clinical bounds (through its `transform`), dummies and missing indicators are 0/1."""
    low: list[float] = []
    high: list[float] = []
    for feature in schema.features:
        for index, _ in enumerate(feature.encoded_names()):
            if isinstance(feature, NumericFeature) and index == 0:
                feature_low, feature_high = feature.encoded_range()
                low.append(feature_low)
                high.append(feature_high)
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
    layout = StatsLayout.for_schema(schema, len(events))
    scaled = np.clip((raw - low) / (high - low), 0.0, 1.0)
    numeric = list(layout.numeric_columns)
    centred = 2.0 * (scaled[:, numeric] - 0.5)  # ∈ [−1, 1]
    sums = scaled.sum(axis=0)
    sums[numeric] = centred.sum(axis=0)
    return np.concatenate(
        [
            [float(raw.shape[0])],
            sums,
            (centred * centred).sum(axis=0),  # 4(u − ½)² ∈ [0, 1]
            events,
            np.asarray(at_risk, dtype=np.float64) * layout.at_risk_weight,
        ]
    ).astype(np.float64)


@dataclass(frozen=True)
class ConsortiumStats:
    """What the coordinator learns from the statistics release: noised consortium totals."""

    count: float
    standardization: Standardization
    events: np.ndarray
    at_risk: np.ndarray


def decode_stats(
    total: np.ndarray, schema: FeatureSchema, n_intervals: int, noise_std: float = 0.0
) -> ConsortiumStats:
    """Turn the (noised) summed statistics vector into standardisation and hazard counts.

    A 0/1 column's variance is p(1 − p) from its mean. A numeric column's is E[(u − ½)²] −
    (E[u] − ½)²; with public bounds much wider than the data (lab values), that difference can
    drown in noise, so an estimate within two noise standard deviations of zero (`noise_std` is the
    std of the summed noise per coordinate, public: σ·Δ·√sites), or below MIN_NUMERIC_VARIANCE, is
    replaced by MIN_NUMERIC_VARIANCE: the feature's scale is then range/30, never a near-zero scale
    that would multiply it by orders of magnitude. A 0/1 column's share is kept `noise_std / n`
    away from 0 and 1 for the same reason.
    """
    low, high = encoded_bounds(schema)
    layout = StatsLayout.for_schema(schema, n_intervals)
    if total.shape != (layout.length,):
        raise ValueError(f"statistics vector has shape {total.shape}, expected ({layout.length},)")
    columns = layout.n_columns
    numeric = list(layout.numeric_columns)
    count = max(float(total[0]), 1.0)
    sums = total[1 : 1 + columns]
    sums_sq = total[1 + columns : 1 + columns + len(numeric)]
    offset = 1 + columns + len(numeric)
    mean_u = sums / count
    mean_u[numeric] = 0.5 + mean_u[numeric] / 2.0  # sums of 2(u − ½)
    mean_u = np.clip(mean_u, 0.0, 1.0)
    # 0/1 columns: p(1 − p), with p kept one noise std away from 0 and 1 so that a rare level
    # whose noisy share came out near zero is not blown up by a near-zero scale
    p_floor = min(noise_std / count, 0.5)
    binary_p = np.clip(mean_u, p_floor, 1.0 - p_floor)
    var_u = binary_p * (1.0 - binary_p)
    offset_from_centre = mean_u[numeric] - 0.5
    numeric_var = sums_sq / (4.0 * count) - offset_from_centre**2
    # two noise stds of this estimate (each: N/(4n) from the second moment plus |m − ½|·N/n via
    # the mean, added rather than in quadrature): a drowned estimate passes with probability ≈ 1%
    noise_level = 2.0 * noise_std / count * (0.25 + np.abs(offset_from_centre))
    unreliable = numeric_var < np.maximum(noise_level, MIN_NUMERIC_VARIANCE)
    var_u[numeric] = np.where(unreliable, MIN_NUMERIC_VARIANCE, numeric_var)
    means = low + (high - low) * mean_u
    stds = (high - low) * np.sqrt(var_u)
    stds = np.where(stds > 1e-6 * (high - low), stds, 1.0)
    events = np.clip(total[offset : offset + n_intervals], 0.0, None)
    at_risk = np.clip(total[offset + n_intervals :] / layout.at_risk_weight, 0.0, None)
    at_risk = np.maximum.accumulate(at_risk[::-1])[::-1]  # at-risk counts never increase with time
    events = np.minimum(events, at_risk)
    return ConsortiumStats(
        count=count,
        standardization=Standardization(means=means.tolist(), stds=stds.tolist()),
        events=events,
        at_risk=at_risk,
    )
