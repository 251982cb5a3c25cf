"""The `[training]` section of a run plan: local or distributed DP-SGD, the server optimiser,
evaluation and hold-out (federation/plan.py holds the whole plan)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TrainingMode = Literal["local", "distributed"]
"""local: each site runs its own DP-SGD (its own full noise) and releases a model delta each
round. distributed: each round every site takes one Poisson batch, releases the integer sum of
clipped per-patient gradients plus a Skellam noise *share*, and secure aggregation adds the
shares into one pooled noisy gradient (docs/model.md, "Distributed DP-SGD")."""


class TrainingPlan(BaseModel):
    """Local or distributed DP-SGD and the server optimiser."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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
        default=0,
        ge=0,
        description=(
            "0: evaluate the final model only (one metrics release); k ≥ 1: also every k-th"
            " round, each evaluation one more release on the held-out patients (docs/model.md)"
        ),
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
