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

- oe_ratio = observed / expected (calibration in the large, `MetricsLayout`): Poisson for the
  observed count given the model's expected one, Var(O) ≈ O, i.e. (O/E)/E on the ratio — the
  usual standardised-ratio (SMR) error, which takes E as fixed (E is a sum of the model's
  predictions over the same patients, whose own sampling spread is much smaller than O's).

Both are added to the noise variance. Counts (`patients`, `events`, `observed`, `expected`) carry
noise only: they are what was counted, not estimates of something else.

O/E's noise is the ratio rule above with the expected sum's noise scaled by the cap (`expected`
is released divided by it); its interval is clipped below at 0 only (the ratio has no upper
bound) and, like the others, symmetric on the ratio scale: with the resolvable rule below it
covers the truth at its nominal rate (tests/unit/federation/test_oe_ratio.py).
"""

from __future__ import annotations

import math

import numpy as np

from federation.releases import MetricsLayout

Z95 = 1.959963984540054
"""Two-sided 95 % normal quantile: `<name>_lo/_hi` = estimate ∓ Z95·se; a printed ± is Z95·se."""

RESOLVABLE_HALF_WIDTH: dict[str, float] = {"c_windowed": 0.25, "ibs": 0.1, "oe_ratio": 0.25}
"""A ratio is `_resolvable` when its 95 % half-width is below this. C's whole range of interest
is 0.5 (chance) to 1, so a half-width of 0.25 or more cannot even tell a model from a coin; a
useful model's IBS sits ~0.1 below the no-skill ~0.25, so ± 0.1 is the widest that tells them
apart. O/E: a model predicting a quarter too many or too few events (0.75–1.25, the range
usually read as acceptable calibration in the large) is what the figure is for; an interval of
± 0.25 or wider around 1 already spans it, so it could not tell such a model from a calibrated
one (and below that width the delta method's symmetric interval still covers, see above)."""

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

    Returns `patients`, `events`, `observed`, `expected` (clipped at 0: a negative count is
    noise), `ibs` (if the noisy patient count is ≥ 1), `c_windowed` (if the noisy pair count is
    ≥ 1) and `oe_ratio` (if the noisy expected count is > 0), each with `_se`,
    `_lo`, `_hi` and `_resolvable`. A count is resolvable when its 95 % interval stays above 0;
    a ratio when its half-width is below `RESOLVABLE_HALF_WIDTH` and its denominator's own 95 %
    interval stays above 0 (otherwise the delta method has nothing to linearise around).
    """
    values = np.asarray(sums, dtype=np.float64)
    if values.shape != (layout.length,):
        raise ValueError(f"metrics sums have shape {values.shape}, expected ({layout.length},)")
    std = coordinate_noise_std(layout, noise_std_per_coordinate)
    patients, events, brier, concordant, comparable, observed, scaled = (float(v) for v in values)
    cap = layout.expected_cap
    expected, expected_std = scaled * cap, float(std[6]) * cap
    counts = (
        ("patients", patients, std[0]),
        ("events", events, std[1]),
        ("observed", observed, std[5]),
        ("expected", expected, expected_std),
    )
    out: dict[str, float] = {}
    for name, count, s in counts:
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
    if expected > 0:
        ratio = observed / expected
        r = max(ratio, 0.0)
        noise_var = (std[5] ** 2 + (r * expected_std) ** 2) / expected**2
        sampling_var = r / expected if sampling else 0.0  # Poisson: Var(O) ≈ O = r·E
        _ratio(out, "oe_ratio", ratio, noise_var + sampling_var, expected, expected_std, math.inf)
    return out


def _ratio(
    out: dict[str, float],
    name: str,
    ratio: float,
    variance: float,
    denominator: float,
    denominator_std: float,
    high: float = 1.0,
) -> None:
    if not (math.isfinite(ratio) and math.isfinite(variance)):
        out[name] = float("nan")
        return
    se = math.sqrt(max(variance, 0.0))
    half = Z95 * se
    out[name] = _clip(ratio, 0.0, high)
    out[f"{name}_se"] = se
    out[f"{name}_lo"] = _clip(ratio - half, 0.0, high)
    out[f"{name}_hi"] = _clip(ratio + half, 0.0, high)
    resolvable = half < RESOLVABLE_HALF_WIDTH[name] and denominator > Z95 * denominator_std
    out[f"{name}_resolvable"] = float(resolvable)


def _clip(value: float, low: float, high: float) -> float:
    return float(min(high, max(low, value)))
