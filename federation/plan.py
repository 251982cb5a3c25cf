"""The RunPlan: what an operator asks the consortium to train, validated before anything is stored.

Everything in a plan is public: sites check it against their local policy, and it is recorded in
every audit log. The time grid in particular comes from the plan, never from private event times.
The feature schema, time grid and model spec are survival's own torch-free types, so that the
coordinator (which never imports torch) validates exactly what the sites will run.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from federation.gaussian import gaussian_epsilon
from federation.plan_messages import format_validation_error
from survival.schema import Feature, FeatureSchema
from survival.spec import ModelSpec
from survival.timegrid import TimeGrid

SITE_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{1,39}$"
PURPOSE_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,79}$"
DEFAULT_PURPOSE = "research.survival-model"
"""The processing purpose a plan declares when it names none (sites list `allowed_purposes`)."""


MIN_TRAINING_HEADROOM = 1.1
"""A plan's ε must exceed the statistics release's own ε by this factor, or training gets a
noise multiplier in the hundreds: nothing a site could learn from."""


class PlanError(ValueError):
    """A plan that cannot be accepted; the message names every offending field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


TrainingMode = Literal["local", "distributed"]
"""local: each site runs its own DP-SGD (its own full noise) and releases a model delta each
round. distributed: each round every site takes one Poisson batch, releases the integer sum of
clipped per-patient gradients plus a Skellam noise *share*, and secure aggregation adds the
shares into one pooled noisy gradient (docs/model.md, "Distributed DP-SGD")."""


class TrainingPlan(_Strict):
    """Local or distributed DP-SGD and the server optimiser."""

    mode: TrainingMode = Field(
        default="local",
        description=(
            "local: each site runs its own DP-SGD and releases a model delta each round;"
            " distributed: each round every site releases a noisy integer gradient sum share and"
            " secure aggregation pools them into one DP-SGD step (docs/model.md)"
        ),
    )
    rounds: int = Field(
        default=5,
        ge=1,
        le=5000,
        description="federated rounds; in distributed mode each round is one DP-SGD step",
    )
    local_epochs: int = Field(
        default=2, ge=1, le=100, description="local mode: passes over a site's data per round"
    )
    batch_size: int = Field(
        default=256, ge=8, le=65536, description="local mode: expected DP-SGD batch size at a site"
    )
    learning_rate: float = Field(
        default=0.05, gt=0.0, le=10.0, description="step size of the optimiser at each site"
    )
    optimizer: Literal["sgd", "adam"] = Field(
        default="adam", description="local mode: the optimiser a site's DP-SGD steps with"
    )
    max_grad_norm: float = Field(
        default=1.0,
        gt=0.0,
        le=1000.0,
        description="L2 bound each per-patient gradient is clipped to (the DP sensitivity)",
    )
    server_optimizer: Literal["fedavg", "fedadam", "fedyogi"] = Field(
        default="fedavg",
        description="how the coordinator applies the aggregated update (Reddi et al. 2021)",
    )
    server_learning_rate: float = Field(
        default=1.0, gt=0.0, le=10.0, description="step size of the server optimiser"
    )
    # FedAdam / FedYogi (Reddi et al. 2021): decay of the first and second moment of the
    # pseudo-gradient, and τ, which bounds the per-coordinate step (ignored by FedAvg).
    server_beta1: float = Field(
        default=0.9,
        ge=0.0,
        lt=1.0,
        description="FedAdam/FedYogi: decay of the pseudo-gradient's first moment",
    )
    server_beta2: float = Field(
        default=0.99,
        ge=0.0,
        lt=1.0,
        description="FedAdam/FedYogi: decay of the pseudo-gradient's second moment",
    )
    server_tau: float = Field(
        default=1e-3,
        gt=0.0,
        le=1.0,
        description="FedAdam/FedYogi: τ, which bounds the per-coordinate step (FedAvg ignores it)",
    )
    evaluate_every: int = Field(
        default=1, ge=1, description="release evaluation metrics every this many rounds"
    )
    aggregation: Literal["weighted", "unweighted"] = Field(
        default="weighted",
        description=(
            "local mode: FedAvg weights each site by its own DP-noised cohort size from the"
            " statistics release (weighted) or counts every site once (unweighted)"
        ),
    )
    sample_rate: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description=(
            "distributed mode: every patient at every site joins a round's batch with this"
            " probability (Poisson sampling; the same q everywhere). 1 = full-batch DP-GD, whose"
            " Skellam accounting is tight; below 1 the only amplification bound proven for the"
            " Skellam mechanism (Zhu & Wang 2019) is loose (docs/model.md)"
        ),
    )
    holdout_min_site_rows: int = Field(
        default=300,
        ge=0,
        le=10_000_000,
        description=(
            "a site with fewer usable rows holds nothing out: it trains on all of them and"
            " releases no evaluation metrics (a fifth of a small site's data is worth more in"
            " training than as a noisy metric); 0 = every site evaluates"
        ),
    )


class PrivacyPlan(_Strict):
    """The (ε, δ) each site spends on the whole run: statistics, training and metrics together."""

    epsilon: float = Field(
        default=3.0, gt=0.0, le=100.0, description="ε each site spends on the whole run"
    )
    delta: float = Field(
        default=1e-5, gt=0.0, lt=0.01, description="δ each site spends on the whole run"
    )
    accountant: Literal["pld", "rdp", "prv"] = Field(
        default="pld",
        description=(
            "how a site composes its releases into ε: pld (dp-accounting's privacy loss"
            " distributions, pessimistic, the tightest), rdp or prv; distributed-mode (Skellam)"
            " releases are always composed in RDP"
        ),
    )
    # Noise multipliers (noise std / L2 sensitivity) of the one-off releases.
    stats_noise_multiplier: float | None = Field(
        default=None,
        ge=0.5,
        le=1000.0,
        description="σ of the statistics release; unset: calibrated from stats_epsilon_share",
    )
    stats_epsilon_share: float = Field(
        default=0.2,
        gt=0.0,
        lt=1.0,
        description=(
            "share of ε the statistics release may spend alone (σ calibrated to it) when"
            " stats_noise_multiplier is unset; the rest goes to training"
        ),
    )
    metrics_noise_multiplier: float = Field(
        default=20.0,
        ge=0.5,
        le=1000.0,
        description="σ (noise std / sensitivity) of each evaluation-metrics release",
    )
    noise_shares: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "distributed mode: every honest participant adds at least 1/noise_shares of the"
            " target noise variance; each site adds more if its policy.trusted_noise_sites"
            " trusts fewer sites (docs/model.md)"
        ),
    )


class SecAggPlan(_Strict):
    """Secure aggregation parameters.

    The threshold of a session among n sites is max(threshold or ceil(2n/3), ⌊(n + c)/2⌋ + 1)
    with c = `max_colluding_sites` (federation/sessions.py): every site re-derives it and joins
    no session with another. A site whose policy assumes more colluders refuses the plan.
    """

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


class RunPlan(_Strict):
    """A complete, validated run plan."""

    name: str = Field(min_length=1, max_length=120, description="a label for people; not an id")
    features: list[Feature] = Field(
        min_length=1, description="the columns every site provides, in design-matrix order"
    )
    time_grid: TimeGrid = Field(description="the public cut points of the hazard model")
    model: ModelSpec = Field(default=ModelSpec(), description="which hazard model to train")
    training: TrainingPlan = Field(default=TrainingPlan(), description="DP-SGD and optimisers")
    privacy: PrivacyPlan = Field(default=PrivacyPlan(), description="the privacy budget")
    secagg: SecAggPlan = Field(default=SecAggPlan(), description="secure aggregation")
    quorum: int = Field(
        default=3,
        ge=2,
        description=(
            "sites that must accept the plan, and the fewest in any aggregation (a site refuses"
            " a plan whose quorum is below its policy.min_session_sites)"
        ),
    )
    sites: list[str] | None = Field(default=None, description="restrict the run to these site ids")
    time_unit: Literal["days", "weeks", "months", "years"] = Field(
        default="days",
        description=(
            "unit of the time grid's cuts; each site converts its follow-up from its own"
            " data.time_unit"
        ),
    )
    seed: int = Field(
        default=0,
        ge=0,
        lt=2**31,
        description="seeds the initial model, which the coordinator builds from public data",
    )
    purpose: str = Field(
        default=DEFAULT_PURPOSE,
        pattern=PURPOSE_PATTERN,
        description=(
            "the processing purpose (GDPR Art. 5(1)(b)); a site refuses a purpose its"
            " policy.allowed_purposes does not list, and excludes rows without consent for it"
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> RunPlan:
        FeatureSchema(features=self.features)  # duplicate names, bad bounds: one schema error
        if self.sites is not None:
            if len(set(self.sites)) != len(self.sites):
                raise ValueError("sites: duplicate site id")
            if self.quorum > len(self.sites):
                raise ValueError(f"quorum {self.quorum} exceeds the {len(self.sites)} listed sites")
        stats_sigma = self.privacy.stats_noise_multiplier
        if stats_sigma is not None:
            floor = gaussian_epsilon(stats_sigma, self.privacy.delta)
            if self.privacy.epsilon <= floor * MIN_TRAINING_HEADROOM:
                raise ValueError(
                    f"privacy.epsilon {self.privacy.epsilon:g} is below the minimum workable"
                    f" {floor * MIN_TRAINING_HEADROOM:.3g} for this plan: the statistics release"
                    f" alone (stats_noise_multiplier {stats_sigma:g}) costs ε = {floor:.3g} at"
                    f" δ = {self.privacy.delta:g}, leaving nothing for training; raise"
                    " privacy.epsilon, raise stats_noise_multiplier, or leave it unset to spend"
                    " privacy.stats_epsilon_share of ε on it"
                )
        if self.model.baseline == "per-site" and self.training.mode != "local":
            raise ValueError(
                'model.baseline = "per-site" needs training.mode = "local": in distributed mode'
                " the baseline's gradient would have to leave the site"
            )
        colluding = self.secagg.max_colluding_sites
        if self.quorum < colluding + 2:
            raise ValueError(
                f"quorum {self.quorum} must be at least secagg.max_colluding_sites + 2"
                f" = {colluding + 2}: a sum over fewer honest sites is one site's release"
            )
        if self.secagg.threshold is not None and self.secagg.threshold > self.quorum:
            # a session always has at least `quorum` participants; a larger t could never succeed
            raise ValueError(
                f"secagg.threshold {self.secagg.threshold} exceeds quorum {self.quorum}: "
                "a run that starts with the quorum could never aggregate"
            )
        return self

    @property
    def feature_schema(self) -> FeatureSchema:
        """The plan's features as survival's schema type, which both sides encode rows and
        vector lengths with, so a plan and its design matrix cannot disagree."""
        return FeatureSchema(features=self.features)

    def canonical_json(self) -> str:
        """The exact text sites sign off on and audit (sorted keys, no whitespace).

        The default `purpose` is left out, so a plan that names none hashes as it did before
        plans had a purpose (a pinned plan keeps its hash across the upgrade)."""
        body = self.model_dump(mode="json")
        if body.get("purpose") == DEFAULT_PURPOSE:
            del body["purpose"]
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        """The hash a site pins when it accepts the plan: every session context and audit entry
        names it, so a coordinator cannot later swap in a different plan under the same run."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def _format_validation_error(error: ValidationError, data: object = None) -> str:
    """Every error in plain words, features named by their `name` (federation/plan_messages.py);
    `data` is the submitted plan, which the locations are resolved against."""
    return format_validation_error(error, RunPlan, data)


def parse_plan(text: str, fmt: Literal["toml", "json"] = "toml") -> RunPlan:
    """Parse and validate a plan; raises PlanError naming every bad field."""
    try:
        data = tomllib.loads(text) if fmt == "toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise PlanError(f"invalid plan: not valid {fmt.upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise PlanError("invalid plan: the top level must be a table/object")
    try:
        return RunPlan.model_validate(data)
    except ValidationError as exc:
        raise PlanError(_format_validation_error(exc, data)) from None
