"""A site's persistent privacy accountant: the history of releases actually run.

The state is only the list of entries ``(noise_multiplier, sample_rate, steps)`` (plus, for a
Skellam release, the mechanism and its sensitivities) and the accountant kind, so it survives
process restarts as a small JSON document and ε composes across rounds, runs and restarts: ε is
always recomputed from the whole history. Every release a site makes is one of these entries:

- a DP-SGD phase: ``steps`` Poisson-subsampled Gaussian steps at ``(σ, q)``;
- a Gaussian release of a sum with noise std ``σ·Δ`` (federated statistics, metrics):
  ``(σ, q=1, steps=1)``;
- a Skellam release (distributed mode: integer vectors for secure aggregation) with integer L2/L1
  sensitivities ``Δ2``/``Δ1`` and per-coordinate noise variance μ = (σ·Δ2)²
  (site_agent.skellam_accounting).

Three accountants, all upper bounds on the true ε:

- ``"rdp"``: Opacus's RDP analysis. RDP → (ε, δ) uses Opacus's conversion (Balle et al. 2020,
  Thm. 21), the same formula as Google's ``dp_accounting`` (Asoodeh et al. 2020, Prop. 12). RDP is
  evaluated at *integer* orders only: at fractional orders Opacus sums the signed binomial series
  of Mironov et al. (2019) while dp_accounting sums absolute values (an upper bound), so the two
  disagree there by up to ~1e-3 in ε. At integer orders both compute the same finite sum and agree
  to ~1e-13, so the ε we report is the one an independent accountant confirms; the price is at
  most ~1 % of ε versus Opacus's default grid (the optimum order is rounded to an integer).
- ``"prv"``: Opacus's PRV accountant (Gopi et al. 2021), its upper estimate.
- ``"pld"``: Google's dp_accounting PLD accountant (add/remove neighbours, pessimistic
  discretisation, so the figure stays an upper bound), typically 10-15 % below RDP. Its
  machinery (merged self-compositions, PLD caches, the ε-wide grid, the fast calibration) is
  site_agent.pld_accounting; this module is the accountant's interface and re-exports what
  callers need (PLD_DISCRETIZATION, and AccountingError from site_agent.accounting_errors).

A history that holds any Skellam entry is accounted in RDP for *every* entry, whatever the kind:
dp-accounting and Opacus have no PLD/PRV for the Skellam mechanism, and composing an RDP bound for
some entries with a PLD for others is not possible, so the site reports the RDP bound (a valid
upper bound, like the others, only looser).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from opacus.accountants import PRVAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

from site_agent.accounting_errors import AccountingError as AccountingError
from site_agent.pld_accounting import (
    PLD_DISCRETIZATION as PLD_DISCRETIZATION,
)
from site_agent.pld_accounting import (
    calibrate_from,
    pld_epsilon,
    pld_grid,
    pld_groups,
)
from site_agent.skellam_accounting import subsampled_skellam_rdp

AccountantKind = Literal["rdp", "prv", "pld"]
ACCOUNTANT_KINDS: tuple[AccountantKind, ...] = ("rdp", "prv", "pld")
Mechanism = Literal["gaussian", "skellam"]
MECHANISMS: tuple[Mechanism, ...] = ("gaussian", "skellam")

#: Integer RDP orders (see the module docstring); 2..128 holds the optimum for ε ≳ 0.1.
RDP_ORDERS: tuple[float, ...] = tuple(float(a) for a in (*range(2, 129), 160, 192, 256))
_INT_ORDERS: tuple[int, ...] = tuple(int(a) for a in RDP_ORDERS)


@dataclass(frozen=True)
class Entry:
    """``steps`` compositions of a Poisson-subsampled noise mechanism: the one unit every
    release is charged in, so DP-SGD rounds, Gaussian sums and Skellam sums compose in one
    history. For a Skellam entry σ is ``√μ / Δ2`` (the Gaussian σ of equal variance) and both
    sensitivities are required; a Gaussian entry has none (its σ is relative to its own Δ)."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    mechanism: Mechanism = "gaussian"
    l2_sensitivity: float | None = None
    l1_sensitivity: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise AccountingError(
                f"noise_multiplier must be >= 0 (0 = no noise), got {self.noise_multiplier}"
            )
        if not (0 < self.sample_rate <= 1):
            raise AccountingError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise AccountingError(f"steps must be a positive integer, got {self.steps!r}")
        if self.mechanism not in MECHANISMS:
            raise AccountingError(f"mechanism must be one of {MECHANISMS}, got {self.mechanism!r}")
        for name in ("l2_sensitivity", "l1_sensitivity"):
            value = getattr(self, name)
            if self.mechanism == "gaussian" and value is not None:
                raise AccountingError(f"a gaussian entry takes no {name}, got {value}")
            number = isinstance(value, int | float) and not isinstance(value, bool)
            valid = number and math.isfinite(value) and value > 0
            if self.mechanism == "skellam" and not valid:
                raise AccountingError(f"a skellam entry needs {name} > 0, got {value!r}")

    def merges_with(self, other: Entry) -> bool:
        """Same mechanism, σ, q and sensitivities: the two compose as one entry of summed steps."""
        return replace(self, steps=other.steps) == other

    def to_row(self) -> list[Any]:
        """The JSON row: ``[σ, q, steps]`` for a Gaussian entry (the format old states have),
        ``[σ, q, steps, "skellam", Δ2, Δ1]`` for a Skellam one."""
        row: list[Any] = [self.noise_multiplier, self.sample_rate, self.steps]
        if self.mechanism == "skellam":
            row += [self.mechanism, self.l2_sensitivity, self.l1_sensitivity]
        return row

    @classmethod
    def from_row(cls, row: list[Any]) -> Entry:
        """Inverse of :meth:`to_row`; raises AccountingError (or a ValueError/TypeError the
        caller turns into one) on anything else."""
        if len(row) == 3:
            s, q, n = row
            return cls(float(s), float(q), _int(n))
        if len(row) == 6 and row[3] == "skellam":
            s, q, n, _, d2, d1 = row
            return cls(float(s), float(q), _int(n), "skellam", float(d2), float(d1))
        raise AccountingError(f"malformed accountant row {row!r}")


def _int(value: Any) -> int:
    """A step count from JSON: an integer, never a silently truncated float."""
    if isinstance(value, bool) or int(value) != value:
        raise AccountingError(f"steps must be an integer, got {value!r}")
    return int(value)


@dataclass
class PrivacyAccountant:
    """History of the releases a site ran, and ε computed from all of it (never a running
    total, so it composes exactly across rounds and restarts)."""

    kind: AccountantKind = "rdp"
    history: list[Entry] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in ACCOUNTANT_KINDS:
            raise AccountingError(
                f"accountant kind must be one of {ACCOUNTANT_KINDS}, got {self.kind!r}"
            )

    def record(
        self,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        *,
        mechanism: Mechanism = "gaussian",
        l2_sensitivity: float | None = None,
        l1_sensitivity: float | None = None,
    ) -> None:
        """Append a release that has actually run, not one that was planned, so ε is that of the
        steps taken (merges with an identical last entry: same mechanism, σ, q, Δ2, Δ1)."""
        entry = _entry(
            noise_multiplier, sample_rate, steps, mechanism, l2_sensitivity, l1_sensitivity
        )
        if self.history and self.history[-1].merges_with(entry):
            entry = replace(entry, steps=self.history.pop().steps + entry.steps)
        self.history.append(entry)

    def record_gaussian_release(self, noise_multiplier: float) -> None:
        """A sum released once with Gaussian noise of std ``noise_multiplier × sensitivity``:
        the statistics and metrics releases, charged as q = 1, one step."""
        self.record(noise_multiplier, 1.0, 1)

    def epsilon(self, delta: float) -> float:
        """ε at ``delta`` for everything recorded so far (0 for an empty history)."""
        return epsilon_of(self.history, delta, self.kind)

    def epsilon_if(
        self,
        delta: float,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        *,
        mechanism: Mechanism = "gaussian",
        l2_sensitivity: float | None = None,
        l1_sensitivity: float | None = None,
    ) -> float:
        """ε at ``delta`` if ``steps`` more steps at ``(σ, q)`` also ran; records nothing, so a
        release can be checked against a cap before it runs."""
        extra = _entry(
            noise_multiplier, sample_rate, steps, mechanism, l2_sensitivity, l1_sensitivity
        )
        return epsilon_of([*self.history, extra], delta, self.kind)

    def to_json(self) -> str:
        """The whole state as a JSON document (floats round-trip exactly), to survive restarts."""
        return json.dumps({"kind": self.kind, "history": [e.to_row() for e in self.history]})

    @classmethod
    def from_json(cls, text: str) -> PrivacyAccountant:
        """Restore a state written by :meth:`to_json` (or by the Gaussian-only versions before
        it); raises AccountingError if malformed."""
        try:
            doc = json.loads(text)
            kind = doc["kind"]
            history = [Entry.from_row(list(row)) for row in doc["history"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise AccountingError(f"malformed accountant state: {exc}") from exc
        return cls(kind=kind, history=history)


def _entry(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    mechanism: Mechanism,
    l2_sensitivity: float | None,
    l1_sensitivity: float | None,
) -> Entry:
    return Entry(
        float(noise_multiplier),
        float(sample_rate),
        int(steps),
        mechanism,
        None if l2_sensitivity is None else float(l2_sensitivity),
        None if l1_sensitivity is None else float(l1_sensitivity),
    )


def epsilon_of(history: list[Entry], delta: float, kind: AccountantKind = "rdp") -> float:
    """ε at ``delta`` of the composition of ``history``: the one computation the ledger and the
    trainer share, so they never disagree. A history with a Skellam entry is accounted in RDP
    whatever ``kind`` says (see the module docstring)."""
    if not (0 < delta < 1):
        raise AccountingError(f"delta must be in (0, 1), got {delta}")
    if kind not in ACCOUNTANT_KINDS:
        raise AccountingError(f"accountant kind must be one of {ACCOUNTANT_KINDS}, got {kind!r}")
    if not history:
        return 0.0
    if kind == "rdp" or any(e.mechanism == "skellam" for e in history):
        return _rdp_epsilon(history, delta)
    if kind == "pld":
        if any(e.noise_multiplier == 0 for e in history):
            return math.inf  # no noise: dp_accounting's NonPrivateDpEvent
        grid = pld_value_discretization(history, delta)
        groups = pld_groups((e.noise_multiplier, e.sample_rate, e.steps) for e in history)
        return pld_epsilon(groups, delta, grid)
    prv = PRVAccountant()
    prv.history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in history]
    with np.errstate(divide="ignore"):  # log(1 - q) = -inf for q = 1 releases: handled
        return float(prv.get_epsilon(delta=delta))


MergeKey = tuple[str, float, float, float | None, float | None]


def merge_key(entry: Entry) -> MergeKey:
    """What makes two entries one mechanism, whose steps then simply add: how `_rdp_epsilon`
    groups a history, and how the ledger keeps one merged (site_agent.ledger_compose)."""
    return (
        entry.mechanism,
        entry.noise_multiplier,
        entry.sample_rate,
        entry.l2_sensitivity,
        entry.l1_sensitivity,
    )


def _rdp_epsilon(history: list[Entry], delta: float) -> float:
    """What RDPAccountant.get_privacy_spent does, with the one-step RDP curve of each entry
    cached: the RDP of ``n`` steps is exactly ``n`` × that of one step. Entries of the same
    mechanism are summed by their steps first, so the cost follows the number of distinct
    mechanisms, not the length of the history: a site's lifetime history gains a row per
    release (hundreds per run in distributed mode), and every charge recomposes it."""
    steps: dict[MergeKey, list[Any]] = {}  # mechanism -> [an entry of it, steps]
    for entry in history:
        group = steps.setdefault(merge_key(entry), [entry, 0])
        group[1] += entry.steps
    rdp = sum(np.asarray(_rdp_one_step_of(e)) * n for e, n in steps.values())
    with warnings.catch_warnings():
        # "optimal order is the largest alpha" only says the bound could be a bit tighter.
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = rdp_analysis.get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)
    return float(eps)


def _rdp_one_step_of(entry: Entry) -> tuple[float, ...]:
    if entry.mechanism == "skellam":
        assert entry.l2_sensitivity is not None and entry.l1_sensitivity is not None
        return subsampled_skellam_rdp(
            entry.noise_multiplier,
            entry.sample_rate,
            entry.l2_sensitivity,
            entry.l1_sensitivity,
            _INT_ORDERS,
        )
    return _rdp_one_step(entry.noise_multiplier, entry.sample_rate)


@functools.lru_cache(maxsize=1024)
def _rdp_one_step(noise_multiplier: float, sample_rate: float) -> tuple[float, ...]:
    """RDP of one Poisson-subsampled Gaussian step at every order (Opacus's analysis)."""
    curve = rdp_analysis.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(RDP_ORDERS)
    )
    return tuple(float(v) for v in np.atleast_1d(curve))


def pld_value_discretization(history: list[Entry], delta: float) -> float:
    """The PLD grid for ``history``: PLD_DISCRETIZATION, doubled until it is at most ~1/20000
    of the (larger) RDP ε (site_agent.pld_accounting.pld_grid says why). Here, not in the PLD
    module, because it needs this module's RDP ε of the whole history."""
    return pld_grid(_rdp_epsilon(history, delta))


# -------------------------------------------------------------------------------- calibration
def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    kind: AccountantKind = "rdp",
    prior: list[Entry] | None = None,
    tolerance: float = 1e-3,
    *,
    mechanism: Mechanism = "gaussian",
    l2_sensitivity: float | None = None,
    l1_sensitivity: float | None = None,
) -> float:
    """Smallest σ (to relative ``tolerance``) such that ``prior`` + ``steps`` steps at q meet ε.

    Calibrated once for a whole plan, so every round runs at the same σ and the plan's total
    ε is at most the target. Bisection keeps the invariant ε(hi) ≤ target < ε(lo), so the σ
    returned meets the target and σ·(1 − tolerance) does not. The PLD (the slow accountant)
    starts from the RDP-calibrated σ (`pld_accounting.calibrate_from`), so it needs few
    evaluations and none at tiny σ, where a PLD is large and slow. ``mechanism`` and the
    sensitivities calibrate a Skellam σ.
    """
    prior = list(prior or [])
    if not (target_epsilon > 0):
        raise AccountingError(f"target_epsilon must be > 0, got {target_epsilon}")
    if not (0 < tolerance < 1):
        raise AccountingError(f"tolerance must be in (0, 1), got {tolerance}")

    def eps(sigma: float) -> float:
        entry = _entry(sigma, sample_rate, steps, mechanism, l2_sensitivity, l1_sensitivity)
        return epsilon_of([*prior, entry], delta, kind)

    _entry(1.0, sample_rate, steps, mechanism, l2_sensitivity, l1_sensitivity)  # validates
    spent = epsilon_of(prior, delta, kind)
    if spent >= target_epsilon:
        raise AccountingError(
            f"the budget is already spent: ε={spent:.4g} >= target {target_epsilon}"
        )
    if kind == "pld" and mechanism == "gaussian" and all(e.mechanism == "gaussian" for e in prior):
        with contextlib.suppress(AccountingError):  # RDP may deem the prior spent: no bracket
            rdp_sigma = calibrate_noise_multiplier(
                target_epsilon, delta, sample_rate, steps, "rdp", prior, 1e-2
            )
            return calibrate_from(eps, target_epsilon, rdp_sigma, tolerance)
    lo, hi = 0.0, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise AccountingError(f"target ε={target_epsilon} is unreachable (σ > 1e6 needed)")
    while hi - lo > tolerance * hi:
        mid = (lo + hi) / 2
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi
