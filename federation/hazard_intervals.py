"""Hazard-ratio intervals of the linear model that account for the DP noise of training.

A hazard ratio exp(β) printed without an interval reads as exact, yet every round of DP-SGD put
Gaussian noise into β. The federation releases no standard error, but the noise itself is
public: the plan fixes every quantity it depends on (clip norm C, learning rate, batch size,
local epochs, rounds, server step η, the (ε, δ) each site calibrates its σ to), the statistics
release gives the consortium's size, and the model card's history says which sites were in
each round's sum. So the final coefficients' noise distribution can be derived from public
figures alone, and with it a 95 % interval.

**The noise model** (local mode, plain SGD at the sites, FedAvg at the server; the demo's and
the documented minimal plan's setting). One DP-SGD step at site i adds lr·σᵢ·C/bᵢ·ξ to every
coordinate (ξ ~ N(0, 1), bᵢ = qᵢnᵢ Opacus's expected batch size). A round runs E·Sᵢ such steps
(Sᵢ = ⌈nᵢ/B⌉), the coordinator averages the survivors' deltas (weights nᵢ/Σn, or 1/m
unweighted) and FedAvg steps by η. Independent Gaussians add, so every coordinate of the final
β carries N(0, s²) with

    s² = Σ_rounds η² Σ_{i in the round's sum} aᵢ² · E·Sᵢ · (lr·σᵢ·C/bᵢ)²,

the same for every coordinate and independent across them (DP-SGD noise is isotropic). This is
closed form, so a parametric bootstrap (re-drawing the noise) would only reproduce the normal
quantiles: the interval is exp(β̂ ± z·s), exact under the model.

Where it approximates, and in which direction:

- **Curvature is ignored.** A noisy coefficient is pulled back towards the optimum by later
  gradient steps, which shrinks the accumulated noise; the model adds the noise as a random walk.
  For a convex loss and stable steps (lr × curvature ≤ 2) this *over*-states s: the interval is
  conservative. Clipping of a round's delta (`secagg.clip_norm`) only shrinks the noise further.
- **σᵢ is recomputed** from the plan with an RDP accountant (dp_accounting, integer orders),
  the statistics release as its prior, as each site calibrates it (`site_agent/train.py`). RDP
  never reports less ε than the PLD/PRV accountants, so for those plans σᵢ here is at least the
  site's: again conservative (a few per cent).
- **Site sizes are not released.** Without `site_rows` every site of the statistics release is
  taken to hold an equal share of the consortium's DP-noised training count. With weighted
  aggregation unequal sites make the noise *larger* than equal ones (the biggest site's steps
  dominate the mean), by at most √m for m sites; pass `site_rows` when the sizes are known.

**What the interval covers**: the DP noise only: the spread of β̂ over re-runs of the same
training on the same patients with fresh noise. Not the sampling error (another cohort from the
same population): the sites release no variance, and a Fisher-information estimate from the
released moments would need the features' correlations, which are not released either.
Per-unit ratios divide by the consortium SDs, which are DP estimates themselves; their own noise
is not in the interval (it is small: the statistics release is one release at σ ≈ 3–6 over
thousands of patients).

Other settings (distributed mode, Adam at the sites, FedAdam/FedYogi, the MLP) pass the noise
through data-dependent steps, so no closed form holds: `hazard_ratio_intervals` refuses them
with `IntervalUnavailable` rather than printing an interval it cannot justify.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from federation.noise import stats_noise_multiplier
from federation.plan import RunPlan

__all__ = [
    "CoefficientNoise",
    "HazardRatio",
    "IntervalUnavailable",
    "coefficient_noise",
    "hazard_ratio_intervals",
    "training_noise_multiplier",
]

Z95 = 1.959963984540054
RETRY_RESERVE_ROUNDS = 1
"""Rounds a site's σ covers beyond the plan's (`site_agent/train.py` RETRY_RESERVE_ROUNDS,
which a unit test keeps equal to this one)."""
RDP_ORDERS = (*range(2, 129), 160, 192, 256)
"""The integer orders of the sites' RDP accountant (docs/model.md)."""


class IntervalUnavailable(ValueError):
    """The plan's training passes its noise through a step the closed form does not cover."""


class ExportedModel(Protocol):
    """What this module needs of `survival.export.SurvivalModel` (federation may not import it)."""

    card: dict[str, Any]

    def hazard_ratios(self, *, per_unit: bool = False) -> dict[str, float]: ...


@dataclass(frozen=True)
class HazardRatio:
    """One encoded feature's exp(β) with the interval of its DP noise."""

    feature: str
    ratio: float
    lower: float
    upper: float
    log_sd: float
    """std of log(ratio) from the DP noise (on the scale the ratio is on: per SD or per unit)."""

    def as_dict(self) -> dict[str, float | str]:
        return {
            "feature": self.feature,
            "ratio": self.ratio,
            "lower": self.lower,
            "upper": self.upper,
            "log_sd": self.log_sd,
        }


@dataclass(frozen=True)
class CoefficientNoise:
    """The DP noise of the final standardised coefficients: N(0, sd²) on each, independent."""

    sd: float
    rounds: int
    site_rows: tuple[float, ...]
    noise_multipliers: tuple[float, ...]
    equal_sites_assumed: bool


def training_noise_multiplier(plan: RunPlan, n_rows: float) -> float:
    """σ of a local-mode site with `n_rows` training rows, as `site_agent/train.py` calibrates
    it (target ε = the plan's, statistics release as prior), by RDP: never below the site's."""
    training, privacy = plan.training, plan.privacy
    n = max(round(n_rows), 2)
    steps_per_epoch = math.ceil(n / min(training.batch_size, n))
    steps = (training.rounds + RETRY_RESERVE_ROUNDS) * training.local_epochs * steps_per_epoch
    return _calibrated_sigma(
        privacy.epsilon, privacy.delta, stats_noise_multiplier(plan), steps_per_epoch, steps
    )


@functools.lru_cache(maxsize=256)
def _calibrated_sigma(
    epsilon: float, delta: float, stats_sigma: float, steps_per_epoch: int, steps: int
) -> float:
    """Smallest σ (to 0.1 %) whose `steps` Poisson-sampled steps at q = 1/`steps_per_epoch`,
    after one Gaussian release at `stats_sigma`, meet (ε, δ) in RDP."""
    import dp_accounting
    from dp_accounting import rdp

    q = 1.0 / steps_per_epoch

    def spent(sigma: float) -> float:
        accountant = rdp.RdpAccountant(list(RDP_ORDERS))
        accountant.compose(dp_accounting.GaussianDpEvent(stats_sigma))
        event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        accountant.compose(event, steps)
        return float(accountant.get_epsilon(delta))

    lo, hi = 0.0, 1.0
    while spent(hi) > epsilon:
        lo, hi = hi, hi * 2.0
        if hi > 1e6:
            raise IntervalUnavailable("the plan's ε cannot be met: no training noise to model")
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if spent(mid) > epsilon else (lo, mid)
    return hi


def _check_supported(plan: RunPlan) -> None:
    training = plan.training
    reasons = []
    if plan.model.kind != "linear":
        reasons.append(f"model.kind = {plan.model.kind!r} has no hazard ratios")
    if training.mode != "local":
        reasons.append('training.mode = "distributed" (only local mode is modelled)')
    if training.optimizer != "sgd":
        reasons.append(
            f"training.optimizer = {training.optimizer!r} rescales each step by the noisy"
            ' gradients themselves (use "sgd" for intervals)'
        )
    if training.server_optimizer != "fedavg":
        reasons.append(
            f"training.server_optimizer = {training.server_optimizer!r} adapts its step to the"
            ' noise (use "fedavg" for intervals)'
        )
    if reasons:
        raise IntervalUnavailable("no DP-noise interval for this plan: " + "; ".join(reasons))


def _stats_record(history: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    stats = next((r for r in history if r.get("purpose") == "stats"), None)
    if stats is None or "patients" not in stats.get("metrics", {}):
        raise IntervalUnavailable("the card has no statistics release: no cohort size to use")
    return stats


def coefficient_noise(
    plan: RunPlan,
    history: Sequence[Mapping[str, Any]],
    export_round: int | None = None,
    site_rows: Mapping[str, float] | None = None,
) -> CoefficientNoise:
    """The noise of the coefficients after the card history's update rounds (up to
    `export_round`), from public figures; `site_rows` maps site → training rows if known."""
    _check_supported(plan)
    training = plan.training
    stats = _stats_record(history)
    stats_sites = list(stats.get("survivors") or stats.get("participants") or [])
    equal = site_rows is None
    if site_rows is None:
        share = max(float(stats["metrics"]["patients"]), 2.0) / max(len(stats_sites), 1)
        rows: dict[str, float] = {site: share for site in stats_sites}
    else:
        rows = {site: float(n) for site, n in site_rows.items()}
    sigma_of: dict[float, float] = {}
    per_site_var: dict[str, float] = {}
    for site, n in rows.items():
        if n not in sigma_of:
            sigma_of[n] = training_noise_multiplier(plan, n)
        n_int = max(round(n), 2)
        batch = min(training.batch_size, n_int)
        steps_per_epoch = math.ceil(n_int / batch)
        expected_batch = max(int(n_int / steps_per_epoch), 1)  # Opacus: int(n · q)
        step_sd = training.learning_rate * sigma_of[n] * training.max_grad_norm / expected_batch
        per_site_var[site] = training.local_epochs * steps_per_epoch * step_sd**2
    variance, rounds = 0.0, 0
    for record in history:
        if record.get("purpose") != "update":
            continue
        if export_round is not None and int(record.get("round", 0)) > export_round:
            continue
        survivors = [s for s in record.get("survivors", []) if s in rows]
        missing = set(record.get("survivors", [])) - set(rows)
        if missing:
            raise IntervalUnavailable(
                f"no training size for {', '.join(sorted(missing))}, which trained: pass it"
                " in site_rows"
            )
        if not survivors:
            continue
        total = sum(rows[s] for s in survivors)
        weighted = training.aggregation == "weighted"
        for site in survivors:
            a = rows[site] / total if weighted else 1.0 / len(survivors)
            variance += training.server_learning_rate**2 * a**2 * per_site_var[site]
        rounds += 1
    return CoefficientNoise(
        sd=math.sqrt(variance),
        rounds=rounds,
        site_rows=tuple(rows.values()),
        noise_multipliers=tuple(sigma_of[n] for n in rows.values()),
        equal_sites_assumed=equal,
    )


def hazard_ratio_intervals(
    model: ExportedModel,
    *,
    per_unit: bool = False,
    level: float = 0.95,
    site_rows: Mapping[str, float] | None = None,
) -> list[HazardRatio]:
    """exp(β) of every encoded feature with the central `level` interval of its DP noise.

    `model` is what `survival.export.load_model` returns; per SD of the consortium by default,
    per unit with `per_unit=True` (as `hazard_ratios`). Raises `IntervalUnavailable` for a plan
    whose noise the closed form does not cover (see the module docstring).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    card = model.card
    plan = RunPlan.model_validate(card["plan"])
    round_ = card.get("round")
    noise = coefficient_noise(
        plan, card.get("history", []), None if round_ is None else int(round_), site_rows
    )
    ratios = model.hazard_ratios(per_unit=per_unit)
    stds = list(card["standardization"]["stds"]) if per_unit else [1.0] * len(ratios)
    z = Z95 if level == 0.95 else _normal_quantile(0.5 + level / 2.0)
    out = []
    for (name, ratio), std in zip(ratios.items(), stds, strict=True):
        log_sd = noise.sd / float(std)
        beta = math.log(ratio)
        lower, upper = math.exp(beta - z * log_sd), math.exp(beta + z * log_sd)
        out.append(HazardRatio(name, ratio, lower, upper, log_sd))
    return out


def _normal_quantile(p: float) -> float:
    """Φ⁻¹(p) by bisection on `math.erfc` (no scipy needed for one number)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        if 0.5 * math.erfc(-mid / math.sqrt(2.0)) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0
