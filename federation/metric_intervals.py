"""Consortium evaluation metrics with the uncertainty the coordinator can state about them.

A federated evaluation is a ratio of two DP-noised sums (`MetricsLayout`): with a large noise
multiplier its point estimate alone is noise that looks like a number (σ = 20 gave c_windowed
0.46, 0.27, 0.53, 0.00, 0.43 for a true 0.79, and −74.5 events). The noise model is public, so
the coordinator can say how much of a figure is noise; this module turns the decoded sums into
the point estimates of `metrics_from_sums` plus, per figure, a standard error, a 95 % interval
and a flag saying whether the interval is narrow enough to tell anything.

Noise. Each site adds N(0, s²) to every coordinate of its *weighted* release, s = σ·Δ (Δ =
`layout.sensitivity`); a sum of n sites' releases therefore carries N(0, n·s²) per weighted
coordinate. In distributed mode the honest sites' Skellam shares add up to between one and n
targets; the caller passes the larger, σ·Δ·√n, so intervals there are conservative (too wide,
never too narrow). `layout.decode` divides coordinate i by weight_i, so its noise std is
`noise_std_per_coordinate / weight_i`; the coordinates' noises are independent.

Ratios. `c_windowed = concordant / comparable` and `ibs = max_weight · brier / patients` get the
delta-method variance of a ratio of independent noisy sums, Var(A/B) ≈ (s_A² + r²·s_B²) / B²,
with r the estimate clipped to its range (the truth lies there). The interval is centred on the
unclipped ratio (which is unbiased to first order) and then clipped to [0, 1] like the estimate.

Sampling. The held-out patients are a sample too; what the released sums allow:

- c_windowed: binomial, c(1 − c) / comparable, as if the comparable pairs were independent.
  Pairs share patients (each patient sits in up to 2·window of them), so this is a *lower*
  estimate of the sampling variance; at the DP noise levels where the question matters the
  noise term dominates it by orders of magnitude.
- ibs: a patient's Brier term b ∈ [0, 1] (`MetricsLayout`), so Var(b) ≤ μ(1 − μ) with μ its
  mean: max_weight²·μ(1 − μ) / patients is an *upper* bound (the sum of squares is not
  released, so the true spread cannot be estimated).

Both are added to the noise variance. Counts (`patients`, `events`) carry noise only: they are
what was counted, not estimates of something else.
"""

from __future__ import annotations

import math

import numpy as np

from federation.releases import MetricsLayout

Z95 = 1.959963984540054
"""Two-sided 95 % normal quantile: `<name>_lo/_hi` = estimate ∓ Z95·se; a printed ± is Z95·se."""

RESOLVABLE_HALF_WIDTH: dict[str, float] = {"c_windowed": 0.25, "ibs": 0.1}
"""A ratio is `_resolvable` when its 95 % half-width is below this. C's whole range of interest
is 0.5 (chance) to 1, so a half-width of 0.25 or more cannot even tell a model from a coin; a
useful model's IBS sits ~0.1 below the no-skill ~0.25, so ± 0.1 is the widest that tells them
apart."""

SUFFIXES = ("_se", "_lo", "_hi", "_resolvable")
"""The entries added next to each figure `name`: `name_se`, `name_lo`, `name_hi`, and
`name_resolvable` (1.0 or 0.0); printers group them with `name`."""


def coordinate_noise_std(layout: MetricsLayout, noise_std_per_coordinate: float) -> np.ndarray:
    """The noise std of each *decoded* coordinate: the weighted sum's per-coordinate std divided
    by that coordinate's weight, since `layout.decode` divides by it."""
    std: np.ndarray = float(noise_std_per_coordinate) / layout.weights
    return std


def metrics_with_uncertainty(
    sums: np.ndarray,
    layout: MetricsLayout,
    noise_std_per_coordinate: float,
    *,
    sampling: bool = True,
) -> dict[str, float]:
    """Point estimates of `metrics_from_sums` plus their uncertainty (module docstring).

    `sums` is `layout.decode` of the summed weighted release; `noise_std_per_coordinate` is the
    public std of that weighted sum's noise per coordinate (σ·Δ·√n for n sites). With `sampling`
    False only the DP noise is accounted for (the interval is then about the consortium's own
    noise-free figure, not about the population it was drawn from).

    Returns `patients`, `events` (clipped at 0: a negative count is noise), `ibs` (if the noisy
    patient count is ≥ 1) and `c_windowed` (if the noisy pair count is ≥ 1), each with `_se`,
    `_lo`, `_hi` and `_resolvable`. A count is resolvable when its 95 % interval stays above 0;
    a ratio when its half-width is below `RESOLVABLE_HALF_WIDTH` and its denominator's own 95 %
    interval stays above 0 (otherwise the delta method has nothing to linearise around).
    """
    values = np.asarray(sums, dtype=np.float64)
    if values.shape != (layout.length,):
        raise ValueError(f"metrics sums have shape {values.shape}, expected ({layout.length},)")
    std = coordinate_noise_std(layout, noise_std_per_coordinate)
    patients, events, brier, concordant, comparable = (float(v) for v in values)
    out: dict[str, float] = {}
    for name, count, s in (("patients", patients, std[0]), ("events", events, std[1])):
        out[name] = round(max(count, 0.0), 1)
        half = Z95 * float(s)
        out[f"{name}_se"] = float(s)
        out[f"{name}_lo"] = max(count - half, 0.0)
        out[f"{name}_hi"] = max(count + half, 0.0)
        out[f"{name}_resolvable"] = float(count > half)
    if patients >= 1:
        # ibs = max_weight·brier/patients: numerator noise scaled by max_weight
        ratio = layout.max_weight * brier / patients
        r = _clip(ratio, 0.0, 1.0)
        noise_var = ((layout.max_weight * std[2]) ** 2 + (r * std[0]) ** 2) / patients**2
        mu = _clip(r / layout.max_weight, 0.0, 1.0)
        sampling_var = layout.max_weight**2 * mu * (1.0 - mu) / patients if sampling else 0.0
        _ratio(out, "ibs", ratio, noise_var + sampling_var, patients, float(std[0]))
    if comparable >= 1:
        ratio = concordant / comparable
        c = _clip(ratio, 0.0, 1.0)
        noise_var = (std[3] ** 2 + (c * std[4]) ** 2) / comparable**2
        sampling_var = c * (1.0 - c) / comparable if sampling else 0.0
        _ratio(out, "c_windowed", ratio, noise_var + sampling_var, comparable, float(std[4]))
    return out


def _ratio(
    out: dict[str, float],
    name: str,
    ratio: float,
    variance: float,
    denominator: float,
    denominator_std: float,
) -> None:
    if not (math.isfinite(ratio) and math.isfinite(variance)):
        out[name] = float("nan")
        return
    se = math.sqrt(max(variance, 0.0))
    half = Z95 * se
    out[name] = _clip(ratio, 0.0, 1.0)
    out[f"{name}_se"] = se
    out[f"{name}_lo"] = _clip(ratio - half, 0.0, 1.0)
    out[f"{name}_hi"] = _clip(ratio + half, 0.0, 1.0)
    resolvable = half < RESOLVABLE_HALF_WIDTH[name] and denominator > Z95 * denominator_std
    out[f"{name}_resolvable"] = float(resolvable)


def _clip(value: float, low: float, high: float) -> float:
    return float(min(high, max(low, value)))
