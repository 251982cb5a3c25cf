"""The layout of one evaluation's metrics release: the consortium block, and in the final
evaluation one block per subgroup level and one per permuted feature.

Every block is the seven metric sums of `MetricsLayout` ([patients, events, brier_sum,
concordant, comparable, observed, expected], weighted by `MetricsLayout.weights`), computed on a
subset of the site's held-out rows (a subgroup level) or on all of them with one feature permuted
(importance; its observed and expected are released as 0, since importance is read from C
alone and a constant costs no sensitivity). The blocks are
concatenated into one vector, noised once with N(0, (σ·Δ)²) per coordinate and summed by one
secure-aggregation session, so the coordinator sees consortium sums per block, never a site's.

Sensitivity under adding or removing one held-out patient (Δ, L2, of the weighted vector):

- the consortium block moves by at most s = `MetricsLayout.sensitivity` (its own argument);
- a patient belongs to exactly one level of each subgroup feature, and a level's block is the
  same statistics on that level's rows alone: one block per subgroup feature moves, by ≤ s;
- a permuted block (see `site_agent.releases.permuted_rows`: rows in a keyed-hash order, each
  takes the feature of the next row, cyclically) keeps the sort order of the consortium block, so
  inserting patient k inserts k (≤ the consortium bound) *and* changes the feature value, hence
  the prediction, of exactly one other patient, k's predecessor in the hash order. That patient
  sits in ≤ 2·window pairs and has one Brier term: raw moves (1, 1, 2, 4·window, 2·window, 0,
  0), weighted L2 `permuted_sensitivity` (≈ 1.56, against s ≈ 0.98).

  Δ² = s²·(1 + G) + P·PERMUTED_SENSITIVITY², G subgroup features, P permuted features.

A changed patient (remove one, add another) moves the release by at most 2Δ, as for every other
release of the ledger, whose neighbouring relation is add/remove.

Cost. The site charges the Gaussian mechanism it runs: noise std σ·Δ with σ =
`privacy.metrics_noise_multiplier`, i.e. noise multiplier σ on sensitivity Δ. That is the same
ledger entry (σ, q = 1, one step) as an evaluation without blocks, so the ε of the evaluation does
not change; what the blocks cost is *precision*: every coordinate's noise grows by Δ/s (√3 ≈ 1.7
for two subgroup features). Only the final evaluation carries the blocks, so that cost is paid
once per run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from federation.plan import RunPlan
from federation.plan_evaluation import Subgroup, subgroups
from federation.releases import MAX_COHORT, MetricsLayout
from secagg.quantize import QuantizationConfig

BLOCK = MetricsLayout().length
"""Coordinates per block: patients, events, brier_sum, concordant, comparable, observed,
expected (`MetricsLayout`; the layout's fields are fixed, only its numbers are parameters)."""

OVERALL = "overall"


def permuted_raw_sensitivity(layout: MetricsLayout) -> tuple[float, ...]:
    """How far one patient moves each unweighted coordinate of a permuted block: its own terms
    plus one other patient's changed prediction (module docstring); observed and expected are
    released as 0 in a permuted block, so they move by nothing."""
    pairs = 2.0 * layout.window
    return (1.0, 1.0, 2.0, 2.0 * pairs, pairs, 0.0, 0.0)


def permuted_sensitivity(layout: MetricsLayout) -> float:
    """Weighted L2 sensitivity of one permuted block."""
    moved = np.asarray(permuted_raw_sensitivity(layout)) * layout.weights
    return float(np.linalg.norm(moved))


@dataclass(frozen=True)
class EvaluationRelease:
    """The blocks of one evaluation's release, from public plan fields alone."""

    base: MetricsLayout
    groups: tuple[Subgroup, ...] = ()
    permuted: tuple[str, ...] = ()

    @classmethod
    def for_round(cls, plan: RunPlan, round_: int) -> EvaluationRelease:
        """The release of the evaluation of `round_`: blocks only in the final evaluation (the
        final model's, `training.rounds`), so the precision they cost is spent once."""
        base = MetricsLayout()
        if round_ != plan.training.rounds or not plan.evaluation.active:
            return cls(base)
        groups = subgroups(plan.evaluation, plan.feature_schema)
        permuted = tuple(plan.feature_schema.names) if plan.evaluation.importance else ()
        return cls(base, groups, permuted)

    @property
    def block_names(self) -> tuple[str, ...]:
        """`overall`, `subgroup:<feature>=<level>` per level, `importance:<feature>` per feature:
        the key prefixes the coordinator decodes into (`federation/subgroup_metrics.py`)."""
        names = [OVERALL]
        for group in self.groups:
            names.extend(f"subgroup:{group.feature}={label}" for label in group.labels)
        names.extend(f"importance:{feature}" for feature in self.permuted)
        return tuple(names)

    @property
    def n_blocks(self) -> int:
        return len(self.block_names)

    @property
    def length(self) -> int:
        """Coordinates of the release (the secure-aggregation session's vector length)."""
        return BLOCK * self.n_blocks

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity Δ of the weighted release under adding or removing one patient."""
        s = self.base.sensitivity
        p = permuted_sensitivity(self.base)
        return math.sqrt(s * s * (1 + len(self.groups)) + len(self.permuted) * p * p)

    def encode(self, blocks: np.ndarray) -> np.ndarray:
        """A site's raw block sums (n_blocks × BLOCK) → the flat weighted release (before
        noise)."""
        values = np.asarray(blocks, dtype=np.float64).reshape(self.n_blocks, BLOCK)
        weighted: np.ndarray = (values * self.base.weights[None, :]).reshape(-1)
        return weighted

    def decode(self, weighted_sum: np.ndarray) -> np.ndarray:
        """The summed weighted release → raw block sums (n_blocks × BLOCK)."""
        values = np.asarray(weighted_sum, dtype=np.float64).reshape(self.n_blocks, BLOCK)
        raw: np.ndarray = values / self.base.weights[None, :]
        return raw

    def quantization(self, n_participants: int) -> QuantizationConfig:
        """The consortium block's fixed-point encoding, widened to the longer vector (every
        weighted coordinate is still ≤ 0.61·MAX_COHORT, so MAX_COHORT leaves room for noise)."""
        bound = float(MAX_COHORT)
        return QuantizationConfig(
            clip_norm=bound * math.sqrt(self.length),
            coord_bound=bound,
            scale=64.0,
            max_participants=max(n_participants, 2),
        )
