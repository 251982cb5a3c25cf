"""The plan-level view of local training: standardise, discretise, calibrate, charge, train.

σ is calibrated once per plan so that the run's training releases, composed with the statistics
release already charged, meet the plan's ε; it is reproducible every round (same inputs), and one
round of slack is reserved so that a retried round still fits the plan (the ledger refuses any
release beyond it either way).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from federation.plan import RunPlan
from site_agent.accounting import Entry, calibrate_noise_multiplier
from site_agent.data import LocalDataset
from site_agent.train import LocalTrainer, TrainerConfig, TrainingError
from survival.loss import risk_score, survival_curve
from survival.models import build_model, load_flat_parameters
from survival.schema import Standardization

RETRY_RESERVE_ROUNDS = 1


def standardise(raw: np.ndarray, means: Sequence[float], scales: Sequence[float]) -> np.ndarray:
    return Standardization(means=list(means), stds=list(scales)).apply(raw)


def trainer_for(plan: RunPlan, n_samples: int) -> LocalTrainer:
    """A LocalTrainer whose σ covers the whole plan (+ reserve), before any prior release."""
    training = plan.training
    config = TrainerConfig(
        rounds=training.rounds + RETRY_RESERVE_ROUNDS,
        local_epochs=training.local_epochs,
        batch_size=min(training.batch_size, n_samples),
        learning_rate=training.learning_rate,
        optimizer=training.optimizer,
        max_grad_norm=training.max_grad_norm,
        target_epsilon=plan.privacy.epsilon,
        target_delta=plan.privacy.delta,
        accountant=plan.privacy.accountant,
    )
    return LocalTrainer(
        plan.model, plan.feature_schema.n_encoded, plan.time_grid.n_intervals, config, n_samples
    )


def train_update(
    plan: RunPlan,
    data: LocalDataset,
    global_vector: np.ndarray,
    means: Sequence[float],
    scales: Sequence[float],
    prior: list[Entry],
    charge: Callable[[float, float, int], None],
) -> np.ndarray:
    """One round of local DP-SGD from the global vector; returns the flat float32 delta.

    `charge(σ, q, steps)` is called before the first gradient step and must raise to refuse.
    """
    raw, time, event = data.split(holdout=False)
    if time.size < 2:
        raise TrainingError("the training split has fewer than 2 patients")
    x = standardise(raw, means, scales)
    interval, event_k = plan.time_grid.discretize(time, event)
    trainer = trainer_for(plan, time.size)
    trainer.noise_multiplier = calibrate_noise_multiplier(
        plan.privacy.epsilon,
        plan.privacy.delta,
        trainer.sample_rate,
        trainer.plan_steps,
        plan.privacy.accountant,
        prior=prior,
    )
    steps = plan.training.local_epochs * trainer.steps_per_epoch
    charge(trainer.noise_multiplier, trainer.sample_rate, steps)
    update = trainer.train_round(global_vector, x, interval, event_k)
    if update.steps != steps:  # cannot happen with Opacus's Poisson loader; refuse to under-count
        raise TrainingError(f"ran {update.steps} DP-SGD steps but charged {steps}")
    return update.delta


def predict(
    plan: RunPlan,
    global_vector: np.ndarray,
    raw: np.ndarray,
    means: Sequence[float],
    scales: Sequence[float],
) -> tuple[np.ndarray, np.ndarray]:
    """(survival curves [n, K] at the grid cuts, risk scores [n]) of the global model."""
    model = build_model(plan.model, plan.feature_schema.n_encoded, plan.time_grid.n_intervals)
    load_flat_parameters(model, global_vector)
    model.eval()
    x = torch.as_tensor(standardise(raw, means, scales))
    with torch.no_grad():
        logits = model(x)
        surv = survival_curve(logits).numpy().astype(np.float64)
        risk = risk_score(logits).numpy().astype(np.float64)
    return surv, risk
