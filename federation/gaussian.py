"""The analytic Gaussian mechanism (Balle & Wang, ICML 2018, Theorem 8): exact (ε, δ) of one
Gaussian release, and its inverses. Pure `math`, so the plan's own validation, the coordinator
(no torch, no accountant) and every site compute the same figures.
"""

from __future__ import annotations

import math


def _phi(x: float) -> float:
    """Standard normal CDF."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gaussian_delta(noise_multiplier: float, epsilon: float) -> float:
    """The exact δ at which one Gaussian release with noise std `noise_multiplier` × sensitivity
    is (ε, δ)-DP (Balle & Wang 2018, Theorem 8)."""
    if noise_multiplier <= 0:
        return 1.0
    a = 1.0 / (2.0 * noise_multiplier)
    b = epsilon * noise_multiplier
    return _phi(a - b) - math.exp(epsilon) * _phi(-a - b)


def calibrate_gaussian(epsilon: float, delta: float, tolerance: float = 1e-6) -> float:
    """The smallest σ (to relative `tolerance`) whose single Gaussian release is (ε, δ)-DP."""
    if not (epsilon > 0 and 0 < delta < 1):
        raise ValueError(f"need ε > 0 and 0 < δ < 1, got ε={epsilon}, δ={delta}")
    lo, hi = 0.0, 1.0
    while gaussian_delta(hi, epsilon) > delta:
        lo, hi = hi, hi * 2.0
        if hi > 1e6:
            raise ValueError(f"ε={epsilon} at δ={delta} needs σ > 1e6")
    while hi - lo > tolerance * hi:
        mid = (lo + hi) / 2.0
        if gaussian_delta(mid, epsilon) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def gaussian_epsilon(noise_multiplier: float, delta: float, tolerance: float = 1e-9) -> float:
    """The smallest ε at which one Gaussian release of `noise_multiplier` is (ε, δ)-DP."""
    if not (noise_multiplier > 0 and 0 < delta < 1):
        raise ValueError(f"need σ > 0 and 0 < δ < 1, got σ={noise_multiplier}, δ={delta}")
    if gaussian_delta(noise_multiplier, 0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(noise_multiplier, hi) > delta:
        lo, hi = hi, hi * 2.0
    while hi - lo > tolerance * max(hi, 1.0):
        mid = (lo + hi) / 2.0
        if gaussian_delta(noise_multiplier, mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi
