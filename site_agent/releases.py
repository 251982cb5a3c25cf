"""What a site computes for each release, before noise, quantisation and secure aggregation.

The layouts (lengths, sensitivities, fixed-point encodings) are shared with the coordinator in
`federation.releases`; this module holds the site-side arithmetic that needs patient rows.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping

import numpy as np

from federation.evaluation_release import EvaluationRelease
from federation.releases import MetricsLayout
from survival.metrics import CensoringSurvival
from survival.timegrid import TimeGrid


def gaussian_noise(size: int, std: float) -> np.ndarray:
    """Gaussian noise from a generator freshly seeded with 256 bits of OS entropy per release.

    Like Opacus without secure_mode, this uses a statistical (not cryptographic) generator; the
    seed, never stored, is what an attacker would have to guess.
    """
    rng = np.random.default_rng(int.from_bytes(os.urandom(32), "little"))
    return rng.normal(0.0, std, size=size)


def consortium_censoring(
    grid: TimeGrid, events: np.ndarray, at_risk: np.ndarray
) -> CensoringSurvival:
    """The public censoring curve G from the noised consortium counts on the plan's grid.

    Patients leaving interval k without an event were censored in it; counts are clipped into a
    consistent range first (post-processing of DP output costs no privacy).
    """
    at_risk = np.maximum.accumulate(np.clip(np.asarray(at_risk, float), 0.0, None)[::-1])[::-1]
    events = np.minimum(np.clip(np.asarray(events, float), 0.0, None), at_risk)
    leaving = at_risk - np.append(at_risk[1:], 0.0)
    censored = np.clip(leaving - events, 0.0, at_risk)
    return CensoringSurvival.from_counts(np.asarray(grid.cuts), censored, at_risk)


def metrics_vector(
    time: np.ndarray,
    event: np.ndarray,
    risk: np.ndarray,
    surv: np.ndarray,
    grid: TimeGrid,
    censoring: CensoringSurvival,
    layout: MetricsLayout,
    tie_key: bytes,
    order_risk: np.ndarray | None = None,
    calibration: bool = True,
) -> np.ndarray:
    """[patients, events, Σ brier_i, concordant, comparable, observed, Σ expected_i / cap] with
    bounded per-patient terms.

    See `federation.releases.MetricsLayout` for why concordance is windowed: each patient with an
    event is compared with the `layout.window` patients at the next sort positions (a pair counts
    when the partner's time is strictly later), which bounds one patient's influence on the counts
    by 2·window under any ties. `order_risk` (default `risk`) is the risk the tie order is keyed
    on: a permuted block keeps the unpermuted order (`federation/evaluation_release.py`), and
    releases no calibration (`calibration` False: observed and expected are 0).
    """
    n = time.shape[0]
    if n == 0:  # an empty subgroup level contributes nothing
        return np.zeros(layout.length)
    keyed = risk if order_risk is None else order_risk
    order = np.lexsort((_tie_break(event, keyed, tie_key), time))
    t_sorted, e_sorted, r_sorted = time[order], event[order], risk[order]
    partners = np.arange(n)[:, None] + np.arange(1, layout.window + 1)[None, :]
    in_range = partners < n
    partners = np.minimum(partners, n - 1)
    valid = in_range & (e_sorted[:, None] == 1) & (t_sorted[partners] > t_sorted[:, None])
    diff = r_sorted[:, None] - r_sorted[partners]
    concordant = float(((diff > 0) * valid).sum() + 0.5 * ((diff == 0) * valid).sum())
    comparable = float(valid.sum())

    cuts = np.asarray(grid.cuts)
    eval_cuts = cuts[:-1] if cuts.size > 1 else cuts
    s_eval = surv[:, : eval_cuts.size]
    died_before = (time[:, None] <= eval_cuts[None, :]) & (event[:, None] == 1)
    alive_after = time[:, None] > eval_cuts[None, :]
    g_case = np.maximum(censoring.left_limit(time), 1e-12)[:, None]
    g_t = np.maximum(censoring(eval_cuts), 1e-12)[None, :]
    weight = np.where(died_before, 1.0 / g_case, 0.0) + np.where(alive_after, 1.0 / g_t, 0.0)
    weight = np.minimum(weight, layout.max_weight)
    target = alive_after.astype(np.float64)
    brier_terms = (weight * (target - s_eval) ** 2).mean(axis=1) / layout.max_weight
    observed, expected = (
        calibration_sums(time, event, surv, grid, layout) if calibration else (0, 0)
    )
    return np.array(
        [
            float(n),
            float(event.sum()),
            float(brier_terms.sum()),
            concordant,
            comparable,
            float(observed),
            float(expected),
        ]
    )


def calibration_sums(
    time: np.ndarray, event: np.ndarray, surv: np.ndarray, grid: TimeGrid, layout: MetricsLayout
) -> tuple[float, float]:
    """(events at or before the horizon, Σ min(H_i, cap) / cap): the observed and expected events
    of `MetricsLayout`, H_i the predicted discrete cumulative hazard Σ_{j ≤ k_i} h_ij over the
    intervals patient i was at risk in (k_i by the grid's own convention, `TimeGrid.discretize`).
    One patient adds at most 1 to each (its own event, its own capped term)."""
    index, seen = grid.discretize(time, event)
    curves = np.clip(np.asarray(surv, dtype=np.float64), 0.0, 1.0)
    before = np.concatenate([np.ones((curves.shape[0], 1)), curves[:, :-1]], axis=1)
    hazard = 1.0 - np.divide(curves, before, out=np.zeros_like(curves), where=before > 0)
    hazard = np.clip(hazard, 0.0, 1.0)
    at_risk = np.arange(curves.shape[1])[None, :] <= index[:, None]
    cumulative = (hazard * at_risk).sum(axis=1)
    cap = layout.expected_cap
    return float(seen.sum()), float((np.minimum(cumulative, cap) / cap).sum())


def evaluation_blocks(
    raw: np.ndarray,
    time: np.ndarray,
    event: np.ndarray,
    predict_rows: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    grid: TimeGrid,
    censoring: CensoringSurvival,
    release: EvaluationRelease,
    columns: Mapping[str, tuple[int, int]],
    tie_key: bytes,
) -> np.ndarray:
    """The raw block sums (n_blocks × BLOCK) of `release` on the held-out rows: the consortium
    block, one block per subgroup level (that level's rows alone), one per permuted feature (all
    rows, the feature's encoded columns permuted by `permuted_rows`, the tie order left
    unpermuted, no calibration).
    `predict_rows(raw)` gives (survival curves, risk scores) of the evaluated model."""
    surv, risk = predict_rows(raw)
    layout = release.base
    blocks = [metrics_vector(time, event, risk, surv, grid, censoring, layout, tie_key)]
    for group in release.groups:
        level = group.assign(raw)
        for index in range(len(group.labels)):
            rows = level == index
            blocks.append(
                metrics_vector(
                    time[rows],
                    event[rows],
                    risk[rows],
                    surv[rows],
                    grid,
                    censoring,
                    layout,
                    tie_key,
                )
            )
    if release.permuted:
        order = _row_order(raw, time, event, tie_key)
        for feature in release.permuted:
            start, stop = columns[feature]
            p_surv, p_risk = predict_rows(permuted_rows(raw, order, start, stop))
            blocks.append(
                metrics_vector(
                    time,
                    event,
                    p_risk,
                    p_surv,
                    grid,
                    censoring,
                    layout,
                    tie_key,
                    order_risk=risk,
                    calibration=False,
                )
            )
    return np.vstack(blocks)


def permuted_rows(raw: np.ndarray, order: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The design matrix with columns [start, stop) cyclically shifted along `order`: the row at
    order[i] takes the feature of the row at order[i + 1] (the last takes the first's).

    Why a cyclic shift along a keyed hash order rather than a random permutation: inserting one
    patient into the hash order changes the feature of exactly one other patient (its predecessor),
    which is what bounds the permuted block's sensitivity (`federation/evaluation_release.py`); a
    permutation drawn per row would reshuffle everyone when one patient is added."""
    out = np.array(raw, dtype=np.float64, copy=True)
    if order.size > 1:
        out[order, start:stop] = raw[np.roll(order, -1), start:stop]
    return out


def _row_order(raw: np.ndarray, time: np.ndarray, event: np.ndarray, key: bytes) -> np.ndarray:
    """Rows sorted by a keyed hash of their own content (features, time, event): the order
    depends on no row number, and two identical rows are interchangeable."""
    mac_key = hashlib.sha256(b"concordia-permutation|" + key).digest()
    digests = [
        int.from_bytes(
            hashlib.blake2b(
                np.ascontiguousarray(np.concatenate([row, [t, e]]), dtype=np.float64).tobytes(),
                key=mac_key,
                digest_size=8,
            ).digest(),
            "little",
        )
        for row, t, e in zip(np.asarray(raw, dtype=np.float64), time, event, strict=True)
    ]
    order: np.ndarray = np.argsort(np.asarray(digests, dtype=np.uint64), kind="stable")
    return order


def _tie_break(event: np.ndarray, risk: np.ndarray, key: bytes) -> np.ndarray:
    """Each patient's place among patients with the same time: a keyed hash of its own risk and
    event, never of its row number or of the cohort size.

    Why: the sensitivity argument of `MetricsLayout` needs adding or removing one patient to only
    insert or remove that patient in the sort order. An order drawn per row (a permutation of
    range(n)) reshuffles every tie when n changes, which moved the windowed pair counts by up to
    1.8 × 2·window (tests/unit/site_agent/test_metrics_sensitivity.py). Patients equal in time,
    risk and event are interchangeable in the counts, so their relative order does not matter;
    and the order leaks nothing of the CSV's row order.
    """
    seed = np.uint64(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
    bits = np.ascontiguousarray(risk, dtype=np.float64).view(np.uint64)
    with np.errstate(over="ignore"):
        mixed = _mix64(_mix64(bits ^ seed) ^ np.asarray(event, dtype=np.uint64))
    return mixed


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective mix of 64-bit words (wraps mod 2^64)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    result: np.ndarray = x ^ (x >> np.uint64(31))
    return result
