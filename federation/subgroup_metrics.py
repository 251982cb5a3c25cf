"""Decoding an evaluation release's blocks into named figures, and the gaps between subgroups.

The coordinator (and a site, for its own release) turns the raw block sums of an
`EvaluationRelease` into flat `name → value` figures with `federation/metric_intervals.py`'s
uncertainty, so they travel in the history record's `metrics` map like every other metric:

- the consortium block: `patients`, `events`, `observed`, `expected`, `ibs`, `c_windowed`,
  `oe_ratio` (and `_se/_lo/_hi/_resolvable`), unprefixed, exactly as an evaluation without blocks
  (`oe_ratio` there is the model's calibration in the large);
- a subgroup level: the same names prefixed `subgroup:<feature>=<level>:`;
- a permuted feature: `importance:<feature>:c_windowed` (C with the feature permuted) and
  `importance:<feature>:delta_c` = C − C_permuted, its drop in concordance.

ΔC's standard error is the DP noise's alone: the two C's are computed on the same patients, so
their sampling errors largely cancel in the difference and are not added; the two blocks' noises
are independent (different coordinates), so their variances add. The permutation's own randomness
(one keyed permutation per site) is not an error the release lets us estimate.

Gaps (`subgroup_gaps`): for each subgroup feature and metric (`GAP_METRICS`: C, IBS and the
calibration O/E), the largest minus the smallest level figure, with SE √(se₁² + se₂²) — the
levels hold disjoint patients, so both their noises and their sampling errors are independent —
flagged when |gap| > Z95·SE and both figures are resolvable
(`levels_resolvable`, `federation/metric_intervals.py`). A figure that is not resolvable has a
noisy denominator, where the delta method's SE is too small: in the demo a woman's C of 0.95
± 0.37 against a man's 0.38 ± 0.20 "differed" by 2.7 SE, which was noise. Printers show such a
gap as not resolvable rather than as a number. Taking the extreme pair of several
levels favours a flag (several comparisons); the table shows every level so a reader can judge.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from federation.evaluation_release import EvaluationRelease
from federation.metric_intervals import Z95, metrics_with_uncertainty

SUBGROUP_PREFIX = "subgroup:"
IMPORTANCE_PREFIX = "importance:"
GAP_METRICS = ("c_windowed", "ibs", "oe_ratio")


def release_metrics(
    release: EvaluationRelease, raw_blocks: np.ndarray, noise_std_per_coordinate: float
) -> dict[str, float]:
    """Every block's figures with uncertainty (module docstring). `raw_blocks` is
    `release.decode` of the summed weighted release; `noise_std_per_coordinate` the public std of
    that sum's noise per weighted coordinate (σ·Δ·√n, Δ = `release.sensitivity`)."""
    blocks = np.asarray(raw_blocks, dtype=np.float64).reshape(release.n_blocks, -1)
    base = release.base
    out = metrics_with_uncertainty(blocks[0], base, noise_std_per_coordinate)
    noise_only = metrics_with_uncertainty(blocks[0], base, noise_std_per_coordinate, sampling=False)
    for name, block in zip(release.block_names[1:], blocks[1:], strict=True):
        if name.startswith(SUBGROUP_PREFIX):
            figures = metrics_with_uncertainty(block, base, noise_std_per_coordinate)
            out.update({f"{name}:{key}": value for key, value in figures.items()})
            continue
        permuted = metrics_with_uncertainty(block, base, noise_std_per_coordinate, sampling=False)
        for key in ("c_windowed", "c_windowed_se"):
            if key in permuted:
                out[f"{name}:{key}"] = permuted[key]
        if "c_windowed" in permuted and "c_windowed" in noise_only:
            drop = out["c_windowed"] - permuted["c_windowed"]
            se = math.hypot(noise_only.get("c_windowed_se", 0.0), permuted["c_windowed_se"])
            out[f"{name}:delta_c"] = drop
            out[f"{name}:delta_c_se"] = se
            out[f"{name}:delta_c_lo"] = drop - Z95 * se
            out[f"{name}:delta_c_hi"] = drop + Z95 * se
            out[f"{name}:delta_c_resolvable"] = float(
                noise_only.get("c_windowed_resolvable", 0.0) > 0.5
                and permuted.get("c_windowed_resolvable", 0.0) > 0.5
            )
    return out


def subgroup_rows(metrics: Mapping[str, float]) -> list[dict[str, Any]]:
    """One row per subgroup level found in a record's metrics: feature, level and its figures
    (`value`, `se`, `lo`, `hi`, `resolvable` per metric), in the order the keys were made."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for key, value in metrics.items():
        if not key.startswith(SUBGROUP_PREFIX):
            continue
        group, _, name = key[len(SUBGROUP_PREFIX) :].rpartition(":")
        feature, _, level = group.partition("=")
        row = rows.setdefault((feature, level), {"feature": feature, "level": level})
        row[name] = float(value)
    return list(rows.values())


def importance_rows(metrics: Mapping[str, float]) -> list[dict[str, Any]]:
    """One row per permuted feature: `feature`, `delta_c` with `_se/_lo/_hi/_resolvable`."""
    rows: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        if not key.startswith(IMPORTANCE_PREFIX):
            continue
        feature, _, name = key[len(IMPORTANCE_PREFIX) :].rpartition(":")
        rows.setdefault(feature, {"feature": feature})[name] = float(value)
    return [r for r in rows.values() if "delta_c" in r]


def subgroup_gaps(metrics: Mapping[str, float]) -> list[dict[str, Any]]:
    """Per subgroup feature and metric, the gap between its extreme levels with its SE, and
    whether it exceeds its uncertainty (`flagged`: |gap| > Z95·SE)."""
    by_feature: dict[str, list[dict[str, Any]]] = {}
    for row in subgroup_rows(metrics):
        by_feature.setdefault(row["feature"], []).append(row)
    gaps: list[dict[str, Any]] = []
    for feature, rows in by_feature.items():
        for metric in GAP_METRICS:
            known = [
                r for r in rows if math.isfinite(r.get(metric, math.nan)) and f"{metric}_se" in r
            ]
            if len(known) < 2:
                continue
            high = max(known, key=lambda r: r[metric])
            low = min(known, key=lambda r: r[metric])
            gap = float(high[metric] - low[metric])
            se = math.hypot(high[f"{metric}_se"], low[f"{metric}_se"])
            resolvable = (
                high.get(f"{metric}_resolvable", 1.0) > 0.5
                and low.get(f"{metric}_resolvable", 1.0) > 0.5
            )
            gaps.append(
                {
                    "feature": feature,
                    "metric": metric,
                    "highest": high["level"],
                    "lowest": low["level"],
                    "gap": gap,
                    "se": se,
                    "interval_95": [gap - Z95 * se, gap + Z95 * se],
                    "flagged": bool(resolvable and abs(gap) > Z95 * se),
                    "levels_resolvable": resolvable,
                }
            )
    return gaps
