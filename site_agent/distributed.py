"""This site's part of distributed DP: integer releases that carry a Skellam noise *share*.

In `training.mode = "distributed"` a release is not noised to stand alone: the site adds a share
of the target noise, and secure aggregation adds the honest sites' shares into the noise the sum
needs (docs/model.md, "Distributed DP-SGD"). How big the share is follows from the plan the site
accepted and its own policy, never from the coordinator:

- the target: the noise multiplier σ the site calibrated for the whole run (training) or the
  plan's σ (statistics, metrics), times the release's integer L2 sensitivity Δ2;
- the plan's `privacy.noise_shares` H: every honest participant adds at least 1/H of it;
- the policy's `trusted_noise_sites` h: the site assumes at least h participants, itself
  included, are honest, and adds enough that those h shares reach the target
  (`site_agent.skellam.share_variance`); `budget_epsilon = "worst_case"` makes it trust only
  itself (h = 1).

Each release is charged twice over in the ledger: under the assumption (σ) and from the site's
own share alone (σ_own), and the budget is charged with the one the policy names. The site
refuses sessions with fewer than h participants and an Unmask with fewer than h survivors
(`site_agent.sessions`, `site_agent.secagg_adapter`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from federation import distributed
from federation.integer_release import IntegerEncoding, RangeExceeded
from federation.plan import RunPlan
from federation.releases import Purpose
from site_agent.accounting import Entry, calibrate_noise_multiplier
from site_agent.cohort import training_rows
from site_agent.config import SitePolicy
from site_agent.data import LocalDataset
from site_agent.gradients import clipped_gradient_sum, poisson_batch
from site_agent.model import standardise
from site_agent.skellam import secure_generator, share_variance, skellam_noise
from site_agent.train import RETRY_RESERVE_ROUNDS, TrainingError
from survival.models import build_model, load_flat_parameters


@dataclass(frozen=True)
class NoiseShare:
    """The noise of one integer release: the target under the site's assumption, and its own."""

    noise_multiplier: float
    """σ of the sum if at least `trusted_sites` participants are honest (the assumed view)."""
    own_noise_multiplier: float
    """σ of this site's share alone (the worst case: every other participant colludes)."""
    share_variance: float
    """Per-coordinate variance of the Skellam noise this site adds, in integer units."""
    l2_sensitivity: float
    l1_sensitivity: float
    trusted_sites: int


def trusted_sites(policy: SitePolicy) -> int:
    """The h this site sizes its share for: its policy's, or 1 if its budget is the worst case."""
    return 1 if policy.budget_epsilon == "worst_case" else policy.trusted_noise_sites


def noise_share(
    plan: RunPlan, policy: SitePolicy, noise_multiplier: float, encoding: IntegerEncoding
) -> NoiseShare:
    """The share this site adds to a release whose sum should carry σ = `noise_multiplier`."""
    l2 = encoding.l2_sensitivity
    target = (noise_multiplier * l2) ** 2
    h = trusted_sites(policy)
    variance = share_variance(target, h, plan.privacy.noise_shares)
    return NoiseShare(
        noise_multiplier=noise_multiplier,
        own_noise_multiplier=math.sqrt(variance) / l2,
        share_variance=variance,
        l2_sensitivity=l2,
        l1_sensitivity=encoding.l1_sensitivity,
        trusted_sites=h,
    )


def noisy_integers(
    real_sum: np.ndarray,
    encoding: IntegerEncoding,
    share: NoiseShare,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """The release: the encoded sum plus this site's Skellam share, as uint32 for masking.

    Raises TrainingError if a noised coordinate is outside the range that keeps the session's
    modular sum from wrapping (the round is refused; the check reads only the noised value)."""
    rng = rng if rng is not None else secure_generator()
    noisy = encoding.encode(real_sum) + skellam_noise(encoding.length, share.share_variance, rng)
    try:
        return encoding.to_uint32(noisy)
    except RangeExceeded as exc:
        raise TrainingError(
            f"the noised release is outside the secure sum's range: {exc}"
        ) from None


ChargeShare = Callable[[NoiseShare, float, int], None]
"""``charge(share, q, steps)``: records the release in the ledger, or raises to refuse it."""


class DistributedTraining:
    """One run's distributed DP-SGD at this site: one Poisson batch per round.

    σ is calibrated once for the plan's rounds (plus a spare for a retried round) at the plan's
    sampling rate q, after the run's statistics release (``prior``), with the Skellam
    accountant; the site rebuilds this object only if that prior changes."""

    def __init__(
        self,
        plan: RunPlan,
        data: LocalDataset,
        policy: SitePolicy,
        prior: Sequence[Entry] = (),
    ) -> None:
        rows = training_rows(plan, data)
        if rows.size < 1:
            raise TrainingError("the training split is empty")
        self.plan = plan
        self.prior = tuple(prior)
        self.partition = rows.partition
        self._raw = rows.raw
        interval, event = plan.time_grid.discretize(rows.time, rows.event)
        self._interval = torch.as_tensor(interval, dtype=torch.long)
        self._event = torch.as_tensor(event, dtype=torch.float32)
        self.encoding = distributed.encoding(plan, Purpose.UPDATE)
        self.sample_rate = plan.training.sample_rate
        # built once and loaded with each round's global vector: building it (random initial
        # weights) every one-step round cost more than loading it (no buffers; Dropout keeps none)
        self._model = build_model(
            plan.model, plan.feature_schema.n_encoded, plan.time_grid.n_intervals
        )
        privacy = plan.privacy
        self.noise_multiplier = calibrate_noise_multiplier(
            privacy.epsilon,
            privacy.delta,
            self.sample_rate,
            plan.training.rounds + RETRY_RESERVE_ROUNDS,
            privacy.accountant,
            prior=list(self.prior),
            mechanism="skellam",
            l2_sensitivity=self.encoding.l2_sensitivity,
            l1_sensitivity=self.encoding.l1_sensitivity,
        )
        self.share = noise_share(plan, policy, self.noise_multiplier, self.encoding)

    def release(
        self,
        global_vector: np.ndarray,
        means: Sequence[float],
        scales: Sequence[float],
        charge: ChargeShare,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """One round: charge one Skellam step, sample a batch, sum its clipped gradients, add
        the share; the uint32 release for the round's session."""
        charge(self.share, self.sample_rate, 1)
        rng = rng if rng is not None else secure_generator()
        gradient_sum = self.gradient_sum(global_vector, means, scales, rng)
        return noisy_integers(gradient_sum, self.encoding, self.share, rng)

    def gradient_sum(
        self,
        global_vector: np.ndarray,
        means: Sequence[float],
        scales: Sequence[float],
        rng: np.random.Generator,
    ) -> np.ndarray:
        """The noiseless sum of clipped per-patient gradients over one Poisson batch (float64);
        never released as such (tests compare the noise in a sum against it)."""
        plan = self.plan
        model = self._model
        load_flat_parameters(model, np.asarray(global_vector, dtype=np.float32))
        batch = poisson_batch(self._raw.shape[0], self.sample_rate, rng)
        x = torch.as_tensor(standardise(self._raw[batch], means, scales), dtype=torch.float32)
        index = torch.as_tensor(batch, dtype=torch.long)
        gradient_sum, _count = clipped_gradient_sum(
            model, x, self._interval[index], self._event[index], plan.training.max_grad_norm
        )
        return gradient_sum
