"""RDP of the (Poisson-subsampled) multi-dimensional Skellam mechanism, for distributed-mode sites.

In distributed mode a site releases an *integer* vector (quantised, clipped) plus integer noise,
so that secure aggregation can sum the vectors exactly in a finite group. The noise is symmetric
Skellam, ``Poisson(μ/2) − Poisson(μ/2)`` per coordinate (variance μ), and the mechanism is the
Skellam mechanism of Agarwal, Kairouz & Liu (NeurIPS 2021). Its privacy is not that of a Gaussian
of the same variance: the noise is discrete, and its RDP carries an extra term that depends on
the L1 sensitivity too; this module computes that RDP so a Skellam release is never charged as
if it were Gaussian.

Units: everything is in the integer units of the released vector. ``Δ2`` and ``Δ1`` bound the L2
and L1 norm of the change one patient can make to it, μ is the per-coordinate noise variance, and
a Skellam entry's ``noise_multiplier`` σ is ``√μ / Δ2``, the σ of the Gaussian with the same
variance (so μ = (σ·Δ2)²). As Δ2 grows (finer quantisation) the Skellam RDP tends to the
Gaussian's, from above.

- One unsubsampled step (Agarwal et al., Corollary 3.6), at integer order α > 1::

      ε(α) = α·Δ2²/(2μ) + min( ((2α − 1)·Δ2² + 6·Δ1) / (4μ²), 3·Δ1/(2μ) )

- Poisson subsampling at rate q < 1: the general upper bound of Zhu & Wang (ICML 2019), valid
  for any mechanism with RDP curve ε(·) at integer orders α ≥ 2 (the ``upper_bound=True``
  branch of ``_compute_rdp_subsampled`` in Google's distributed_dp accounting code)::

      ε_q(α) = 1/(α−1) · log( (1−q)^{α−1}(αq − q + 1) + C(α,2) q² (1−q)^{α−2} e^{ε(2)}
                              + 3·Σ_{l=3}^{α} C(α,l) (1−q)^{α−l} q^l e^{(l−1)ε(l)} )

  evaluated in log space (the terms overflow doubles long before α = 256), and the RDP of the
  subsampled step is ``min(ε_q(α), ε(α))``, since subsampling never hurts.

Because of the factor 3 in the Zhu-Wang bound, for q < 1 the Skellam figure tends, as Δ2 grows,
to that bound applied to the Gaussian RDP curve: slightly above Opacus's (exact) subsampled
Gaussian RDP, never below it. At q = 1 it tends to the Gaussian RDP itself.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy.special import gammaln, logsumexp


def skellam_rdp(
    noise_multiplier: float, l2_sensitivity: float, l1_sensitivity: float, orders: tuple[int, ...]
) -> np.ndarray:
    """RDP of one unsubsampled Skellam step at each integer order (Agarwal et al., Cor. 3.6);
    ``inf`` everywhere when there is no noise (σ = 0)."""
    alphas = np.asarray(orders, dtype=float)
    mu = (noise_multiplier * l2_sensitivity) ** 2
    if mu == 0:
        return np.full(alphas.shape, math.inf)
    d2, d1 = l2_sensitivity, l1_sensitivity
    gaussian = alphas * d2**2 / (2 * mu)
    correction = np.minimum(((2 * alphas - 1) * d2**2 + 6 * d1) / (4 * mu**2), 3 * d1 / (2 * mu))
    return np.asarray(gaussian + correction)


def poisson_subsampled_rdp_bound(
    sample_rate: float, rdp_of_order: np.ndarray, orders: tuple[int, ...]
) -> np.ndarray:
    """Zhu & Wang's general upper bound on Poisson-subsampled RDP at each order in ``orders``.

    ``rdp_of_order[l]`` is the unsubsampled mechanism's RDP at integer order ``l`` for every
    ``l = 0..max(orders)`` (entries 0 and 1 are unused). Returns ``min(ε_q(α), ε(α))``.
    """
    q = sample_rate
    eps = np.asarray(rdp_of_order, dtype=float)
    if q >= 1:
        return np.asarray([eps[a] for a in orders])
    log_q, log_1mq = math.log(q), math.log1p(-q)
    out = np.empty(len(orders))
    for i, alpha in enumerate(orders):
        if alpha < 2:
            raise ValueError(f"the subsampling bound needs integer orders >= 2, got {alpha}")
        if not math.isfinite(eps[alpha]):
            out[i] = math.inf  # no noise: subsampling cannot rescue an infinite divergence
            continue
        ls = np.arange(2, alpha + 1)
        log_binom = gammaln(alpha + 1) - gammaln(ls + 1) - gammaln(alpha - ls + 1)
        terms = log_binom + (alpha - ls) * log_1mq + ls * log_q + (ls - 1) * eps[ls]
        terms[1:] += math.log(3.0)  # l >= 3
        head = (alpha - 1) * log_1mq + math.log(alpha * q - q + 1)
        bound = float(logsumexp(np.concatenate(([head], terms)))) / (alpha - 1)
        out[i] = min(bound, float(eps[alpha]))
    return out


@functools.lru_cache(maxsize=1024)
def subsampled_skellam_rdp(
    noise_multiplier: float,
    sample_rate: float,
    l2_sensitivity: float,
    l1_sensitivity: float,
    orders: tuple[int, ...],
) -> tuple[float, ...]:
    """RDP of one Poisson-subsampled Skellam step at each order (cached: a ledger re-evaluates
    the same few (σ, q, Δ2, Δ1) on every charge)."""
    every_order = tuple(range(max(orders) + 1))
    curve = np.full(len(every_order), math.inf)
    curve[2:] = skellam_rdp(noise_multiplier, l2_sensitivity, l1_sensitivity, every_order[2:])
    bound = poisson_subsampled_rdp_bound(sample_rate, curve, orders)
    return tuple(float(v) for v in bound)
