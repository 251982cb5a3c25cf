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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from federation.gaussian import gaussian_epsilon
from federation.metrics_noise import (
    DEFAULT_METRICS_SIGMA,
    METRICS_EPSILON_SHARE,
    MIN_METRICS_SIGMA,
    with_metrics_sigma,
)
from federation.plan_anonymity import KAnonymityPlan, check_layer
from federation.plan_evaluation import EvaluationField, EvaluationPlan
from federation.plan_messages import validation_problems
from federation.plan_secagg import SECAGG_ADDED_DEFAULTS, SecAggPlan
from federation.plan_training import TrainingPlan
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
    """A plan that cannot be accepted; the message names every offending field, and `problems`
    holds them one by one (`location: message`), for callers that list them."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: tuple[str, ...] = tuple(
            problems if problems is not None else [message.removeprefix("invalid plan: ")]
        )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
        default=DEFAULT_METRICS_SIGMA,
        ge=MIN_METRICS_SIGMA,
        le=1000.0,
        description=(
            "σ (noise std / sensitivity) of each evaluation-metrics release; unset: calibrated"
            " so that the plan's evaluations together spend metrics_epsilon_share of ε (the"
            " default shown is that σ at the default ε, δ and one evaluation)"
        ),
    )
    metrics_epsilon_share: float = Field(
        default=METRICS_EPSILON_SHARE,
        gt=0.0,
        le=0.9,
        description=(
            "share of ε the evaluations may spend together on the held-out patients when"
            " metrics_noise_multiplier is unset (composed in parallel with training: it takes"
            " nothing from training's noise; at most 0.9, so that an RDP ledger, which charges"
            " up to ~10 % more than the exact figure, still stays within ε)"
        ),
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
    k_anonymity: KAnonymityPlan | None = Field(
        default=None,
        exclude_if=lambda layer: layer is None,  # unset: the plan hashes as it did before
        description=(
            "[privacy.k_anonymity]: generalise the listed quasi-identifiers at each site and"
            " suppress rows in classes smaller than k (docs/gdpr.md); absent: no layer"
        ),
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
    evaluation: EvaluationField = Field(
        default=EvaluationPlan(),
        description="subgroup and importance blocks of the final evaluation (docs/model.md)",
    )

    @model_validator(mode="before")
    @classmethod
    def _metrics_sigma(cls, data: Any) -> Any:
        """The metrics σ a plan leaves unset, calibrated (`federation/metrics_noise.py`)."""
        return with_metrics_sigma(data, PrivacyPlan, TrainingPlan)

    @model_validator(mode="after")
    def _consistent(self) -> RunPlan:
        FeatureSchema(features=self.features)  # duplicate names, bad bounds: one schema error
        if self.privacy.k_anonymity is not None:
            check_layer(self.privacy.k_anonymity, self.features)
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
        if body.get("evaluation") == EvaluationPlan().model_dump(mode="json"):
            del body["evaluation"]  # likewise: plans without subgroups keep their hash
        for key, default in SECAGG_ADDED_DEFAULTS.items():  # and all-pairs plans theirs
            if body["secagg"].get(key) == default:
                del body["secagg"][key]
        for feature in body["features"]:  # and plans without feature transforms theirs
            if feature.get("transform") == "none":
                del feature["transform"]
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        """The hash a site pins when it accepts the plan: every session context and audit entry
        names it, so a coordinator cannot later swap in a different plan under the same run."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


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
        problems = validation_problems(exc, RunPlan, data)
        raise PlanError("invalid plan: " + "; ".join(problems), problems) from None
