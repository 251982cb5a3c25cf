"""The PLD accountant behind site_agent.accounting: dp-accounting's privacy loss distributions.

Why a module of its own: the PLD is the one accountant with real machinery of ours around it
(merging a history into few self-compositions, two caches of composed PLDs, a grid that widens
with ε, and a calibration that starts from the RDP σ so it needs few slow PLD evaluations),
while site_agent.accounting stays the accountant's interface: entries, histories, ε for every
kind, and calibration. Everything here works on plain ``(σ, q, steps)`` tuples of Gaussian
releases (a history with a Skellam entry is accounted in RDP, never here), so this module needs
nothing of site_agent.accounting, which imports it (and re-exports PLD_DISCRETIZATION).

The PLD is dp_accounting's, built as its PLDAccountant builds it: add/remove neighbours,
pessimistic discretisation and tail truncation, so the ε is an upper bound, typically 10-15 %
below RDP's.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

from dp_accounting import pld

from site_agent.accounting_errors import AccountingError

#: Width of the PLD's privacy-loss grid for ε up to ~20. Rounding is pessimistic, so a coarser
#: grid only makes ε larger (never an under-report): 1e-3 costs ~1e-5 relative at 300 steps and
#: ~1e-3 at 2000 steps of small-ε training, while one evaluation takes ~0.02-0.15 s on two cores
#: (1e-4 takes ten times as long). See pld_grid for larger ε.
PLD_DISCRETIZATION = 1e-3

Group = tuple[float, float, int]
"""``(σ, q, steps)``: ``steps`` Poisson-subsampled Gaussian steps (one Gaussian if q = 1)."""


def pld_groups(history: Iterable[Group]) -> tuple[Group, ...]:
    """The history's ``(σ, q, steps)`` entries as groups for the PLD, in first-seen order, merged
    where the composition is exactly one mechanism (composition commutes; one self-composition
    of N steps costs what one entry does, so a ledger of many rounds and releases stays fast):

    - subsampled entries of equal (σ, q): one entry of the summed steps;
    - every full-batch (q = 1) Gaussian release: Gaussian privacy losses add, so n_i steps at
      σ_i compose to one Gaussian of σ = (Σ n_i/σ_i²)^(-1/2), exactly (and with less rounding
      than composing discretised PLDs one by one, ~1e-7 relative).

    A noiseless entry makes the whole history non-private (the caller returns inf first)."""
    groups: list[list[Any]] = []
    subsampled: dict[tuple[float, float], list[Any]] = {}
    full_batch: list[Any] | None = None
    for sigma, q, steps in history:
        if q == 1:
            if full_batch is None:
                full_batch = [0.0, 1.0, 1]  # [Σ n/σ², q, steps] until the end
                groups.append(full_batch)
            full_batch[0] += steps / sigma**2
        elif (sigma, q) in subsampled:
            subsampled[sigma, q][2] += steps
        else:
            subsampled[sigma, q] = [sigma, q, steps]
            groups.append(subsampled[sigma, q])
    if full_batch is not None:
        full_batch[0] = 1 / math.sqrt(full_batch[0])
    return tuple((float(s), float(q), int(n)) for s, q, n in groups)


def pld_grid(rdp_epsilon: float) -> float:
    """The PLD grid for a history whose RDP ε is ``rdp_epsilon`` (what
    site_agent.accounting.pld_value_discretization computes): PLD_DISCRETIZATION, doubled until
    it is at most ~1/20000 of that (larger) ε. The PLD's support, hence its cost, grows with ε (a
    σ = 0.5 full-batch history of 2000 steps, ε ≈ 4000, takes 10 s on the fine grid); a grid
    proportional to ε keeps every evaluation fast at a relative cost of ≲ 1e-3, and on the
    pessimistic side."""
    if not math.isfinite(rdp_epsilon) or rdp_epsilon <= 20:
        return PLD_DISCRETIZATION
    return PLD_DISCRETIZATION * 2.0 ** math.ceil(math.log2(rdp_epsilon / 20))


@functools.lru_cache(maxsize=256)
def pld_epsilon(groups: tuple[Group, ...], delta: float, grid: float) -> float:
    """ε of the composed PLD of ``groups`` (from `pld_groups`) at ``delta`` on ``grid`` (cached:
    the ledger asks for the same histories repeatedly)."""
    composed = pld.privacy_loss_distribution.identity(grid)
    for group in groups:
        composed = composed.compose(_pld_of_group(*group, grid))
    return float(composed.get_epsilon_for_delta(delta))


@functools.lru_cache(maxsize=128)  # 0.05-1 MB each: a lifetime of ~100 runs' (σ, q) groups
def _pld_of_group(noise_multiplier: float, sample_rate: float, steps: int, grid: float) -> Any:
    """PLD of ``steps`` Poisson-subsampled Gaussian steps, built exactly as dp_accounting's
    PLDAccountant builds a ``SelfComposedDpEvent`` (add/remove neighbours, default pessimistic
    estimate and tail truncation, so an upper bound); PLDs are immutable (composition returns
    a new one), so cached ones are safely reused. A q = 1 group of n steps is one Gaussian of
    std σ/√n, as the accountant composes it."""
    neighbours = pld.privacy_loss_distribution.NeighborRel.ADD_OR_REMOVE_ONE
    if sample_rate < 1:
        return pld.privacy_loss_distribution.from_gaussian_mechanism(
            standard_deviation=noise_multiplier,
            value_discretization_interval=grid,
            sampling_prob=sample_rate,
            neighboring_relation=neighbours,
        ).self_compose(steps)
    return pld.privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=noise_multiplier / math.sqrt(steps),
        value_discretization_interval=grid,
        neighboring_relation=neighbours,
    )


# -------------------------------------------------------------------------------- calibration
def calibrate_from(
    eps: Callable[[float], float], target: float, start: float, tolerance: float
) -> float:
    """The PLD calibration, in ~5 evaluations instead of bisection's ~12 (each is 0.02-0.2 s).

    ``start`` (the RDP σ, whose RDP ε meets the target) is nearly always an upper bracket,
    since the PLD's ε is the smaller; the bracket is then narrowed by interpolating log ε
    linearly in log σ (nearly exact for these curves) and probing either side of the estimate.
    Same invariant as the bisection, ε(hi) ≤ target < ε(lo), so the same guarantee; after 6
    rounds without convergence it falls back to halving the bracket.
    """
    hi, e_hi = start, eps(start)
    while e_hi > target:  # rarely: the PLD above RDP
        hi *= 1.25
        if hi > 1e6:
            raise AccountingError(f"target ε={target} is unreachable (σ > 1e6 needed)")
        e_hi = eps(hi)
    lo, e_lo = hi * 0.85, eps(hi * 0.85)
    while e_lo <= target:  # far less noise suffices
        hi, e_hi = lo, e_lo
        lo = lo * 0.5 if lo > 1e-6 else 0.0
        e_lo = eps(lo) if lo > 0 else math.inf
    for attempt in range(64):
        if hi - lo <= tolerance * hi:
            break
        if attempt >= 6 or lo == 0 or not math.isfinite(e_lo):
            sigma = (lo + hi) / 2
            value = eps(sigma)
            if value > target:
                lo, e_lo = sigma, value
            else:
                hi, e_hi = sigma, value
            continue
        fraction = math.log(e_lo / target) / math.log(e_lo / e_hi)  # of log(hi/lo)
        up = min(lo * (hi / lo) ** fraction * (1 + tolerance / 3), hi)
        if up < hi:
            value = eps(up)
            if value > target:
                lo, e_lo = up, value
                continue
            hi, e_hi = up, value
        down = hi * (1 - 0.9 * tolerance)  # closes the bracket if the estimate was right
        if down > lo:
            value = eps(down)
            if value > target:
                lo, e_lo = down, value
            else:
                hi, e_hi = down, value
    return hi
