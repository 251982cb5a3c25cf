"""The `[secagg]` section of a run plan: thresholds, quantisation, timeouts and the masking graph
(federation/plan.py holds the whole plan; federation/sessions.py turns it into each session's
configuration)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SECAGG_ADDED_DEFAULTS: dict[str, object] = {
    "masking": "all-pairs",
    "neighbours": None,
    "dropout_fraction": 0.1,
}
"""Fields added after plans were first pinned, at their defaults: left out of the canonical JSON,
so an all-pairs plan hashes as it did before sparse masking existed."""


class SecAggPlan(BaseModel):
    """Secure aggregation parameters.

    The threshold of a session among n sites is max(threshold or ceil(2n/3), ⌊(n + c)/2⌋ + 1)
    with c = `max_colluding_sites` (federation/sessions.py): every site re-derives it and joins
    no session with another. A site whose policy assumes more colluders refuses the plan.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: int | None = Field(
        default=None,
        ge=2,
        description="shares needed to unmask a sum; unset: ceil(2n/3), raised as above",
    )
    max_colluding_sites: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="sites assumed to collude with the coordinator; raises every threshold",
    )
    clip_norm: float = Field(
        default=10.0, gt=0.0, description="L2 bound of a model delta before it is quantised"
    )
    coord_bound: float = Field(
        default=2.0, gt=0.0, description="each coordinate is clipped to ± this before quantising"
    )
    scale_bits: int = Field(
        default=18,
        ge=4,
        le=28,
        description="quantisation scale 2^scale_bits (fixed-point precision; docs/secagg.md)",
    )
    offer_timeout_s: float = Field(
        default=120.0,
        gt=0.0,
        le=7 * 86400.0,
        description="how long the plan offer waits for answers (and for sites awaiting approval)",
    )
    train_timeout_s: float = Field(
        default=300.0, gt=0.0, description="seconds sites have to train and mask one round"
    )
    stage_timeout_s: float = Field(
        default=30.0, gt=0.0, description="seconds for each later secure-aggregation stage"
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        le=20,
        description="tries per round (fresh keys each) before the run fails",
    )
    masking: Literal["all-pairs", "sparse"] = Field(
        default="all-pairs",
        description="all-pairs masks, or sparse (SecAgg+) masks over a neighbour graph every"
        " site derives from the session (docs/secagg.md, Sparse masking)",
    )
    neighbours: int | None = Field(
        default=None,
        ge=2,
        le=65534,
        multiple_of=2,
        description="sparse: each site's degree k (even); unset: the smallest k meeting the"
        " documented failure bounds for n, max_colluding_sites and dropout_fraction",
    )
    dropout_fraction: float = Field(
        default=0.1,
        gt=0.0,
        lt=0.5,
        description="sparse: the fraction of sites that may drop out at random in a session"
        " and still leave every neighbourhood able to unmask (probability ≥ 1 − 2^-20)",
    )
