"""A run's training at a site: σ calibrated once for the run (the same σ every round, equal to a
fresh calibration over the same inputs), and the same charge and update as the per-round path
it replaced (a new trainer and two calibrations every round)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import site_agent.train as train_module
from federation.plan import RunPlan, parse_plan
from site_agent.accounting import Entry, calibrate_noise_multiplier
from site_agent.cohort import training_rows
from site_agent.data import LocalDataset
from site_agent.train import (
    RETRY_RESERVE_ROUNDS,
    LocalTrainer,
    RunTraining,
    TrainerConfig,
    TrainingError,
)
from survival.schema import Standardization
from survival.spec import initial_parameters

pytestmark = pytest.mark.unit

PLAN = """
name = "trial"
quorum = 3
[[features]]
kind = "numeric"
name = "age"
min = 40
max = 110
[[features]]
kind = "categorical"
name = "sex"
levels = ["F", "M"]
[time_grid]
cuts = [300.0, 700.0, 1500.0]
[model]
kind = "{kind}"
[training]
rounds = 3
local_epochs = 2
batch_size = 32
[privacy]
epsilon = 3.0
"""
STATS = [Entry(3.0, 1.0, 1)]  # the run's statistics release, charged before training


def plan(kind: str = "mlp") -> RunPlan:
    return parse_plan(PLAN.format(kind=kind))


def dataset(n: int = 150, seed: int = 0) -> LocalDataset:
    rng = np.random.default_rng(seed)
    raw = np.column_stack([rng.uniform(40, 110, n), rng.integers(0, 2, n)]).astype(np.float64)
    return LocalDataset(
        raw=raw,
        time=rng.uniform(10, 2000, n),
        event=rng.integers(0, 2, n).astype(np.int64),
        holdout=rng.uniform(size=n) < 0.2,
        n_rows=n,
        excluded={},
    )


MEANS, SCALES = [75.0, 0.5], [20.0, 0.5]


def start(p: RunPlan) -> np.ndarray:
    schema = p.feature_schema
    return initial_parameters(p.model, schema.n_encoded, p.time_grid.n_intervals, 0).astype(
        np.float32
    )


class Charges:
    """What the site would have charged to its ledger, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float, int]] = []

    def __call__(self, sigma: float, q: float, steps: int) -> None:
        self.calls.append((sigma, q, steps))


def per_round_path(
    p: RunPlan,
    data: LocalDataset,
    vector: np.ndarray,
    prior: list[Entry],
    charge: Callable[[float, float, int], None],
    seed: int,
) -> np.ndarray:
    """What a round did before the merge (site_agent/training.py::train_update): a new trainer
    (σ calibrated without the prior), σ calibrated again with it, then one round."""
    rows = training_rows(p, data)
    raw, time_, event = rows.raw, rows.time, rows.event
    x = Standardization(means=MEANS, stds=SCALES).apply(raw)
    interval, event_k = p.time_grid.discretize(time_, event)
    t = p.training
    config = TrainerConfig(
        rounds=t.rounds + RETRY_RESERVE_ROUNDS,
        local_epochs=t.local_epochs,
        batch_size=min(t.batch_size, time_.size),
        learning_rate=t.learning_rate,
        optimizer=t.optimizer,
        max_grad_norm=t.max_grad_norm,
        target_epsilon=p.privacy.epsilon,
        target_delta=p.privacy.delta,
        accountant=p.privacy.accountant,
    )
    schema = p.feature_schema
    trainer = LocalTrainer(
        p.model, schema.n_encoded, p.time_grid.n_intervals, config, time_.size, seed=seed
    )
    trainer.noise_multiplier = calibrate_noise_multiplier(
        p.privacy.epsilon,
        p.privacy.delta,
        trainer.sample_rate,
        trainer.plan_steps,
        p.privacy.accountant,
        prior=prior,
    )
    steps = t.local_epochs * trainer.steps_per_epoch
    charge(trainer.noise_multiplier, trainer.sample_rate, steps)
    return trainer.train_round(vector, x, interval, event_k).delta


def test_sigma_is_calibrated_once_and_equals_a_fresh_calibration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calibrations: list[tuple[Any, ...]] = []
    models: list[int] = []
    real_calibrate, real_build = train_module.calibrate_noise_multiplier, train_module.build_model

    def counting_calibrate(*args: Any, **kwargs: Any) -> float:
        calibrations.append(args)
        return real_calibrate(*args, **kwargs)

    def counting_build(*args: Any, **kwargs: Any) -> Any:
        models.append(1)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(train_module, "calibrate_noise_multiplier", counting_calibrate)
    monkeypatch.setattr(train_module, "build_model", counting_build)
    p, data = plan(), dataset()
    training = RunTraining(p, data, STATS)
    charges = Charges()
    vector = start(p)
    for _ in range(p.training.rounds):
        vector = vector + training.train_round(vector, MEANS, SCALES, charges)
    assert len(calibrations) == 1  # once per run, not once (or twice) per round
    assert len(models) == 1 + p.training.rounds  # the trainer's, then one per round (was two)

    n = training_rows(p, data).size
    steps_per_epoch = -(-n // p.training.batch_size)
    q = 1.0 / steps_per_epoch
    steps = p.training.local_epochs * steps_per_epoch
    fresh = real_calibrate(
        p.privacy.epsilon,
        p.privacy.delta,
        q,
        (p.training.rounds + RETRY_RESERVE_ROUNDS) * steps,
        p.privacy.accountant,
        prior=STATS,
    )
    assert training.noise_multiplier == fresh
    assert charges.calls == [(fresh, q, steps)] * p.training.rounds


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_charges_and_updates_are_those_of_the_per_round_path(kind: str) -> None:
    p, data = plan(kind), dataset(seed=1)
    training = RunTraining(p, data, STATS)
    mine, theirs = Charges(), Charges()
    vector = start(p)
    for round_ in range(1, p.training.rounds + 1):
        delta = training.train_round(vector, MEANS, SCALES, mine, seed=round_)
        reference = per_round_path(p, data, vector, list(STATS), theirs, seed=round_)
        np.testing.assert_array_equal(delta, reference, err_msg=f"round {round_}")
        vector = vector + delta
    assert mine.calls == theirs.calls


def test_unseeded_rounds_draw_fresh_noise() -> None:
    p, data = plan(), dataset()
    training = RunTraining(p, data, STATS)
    vector = start(p)
    first = training.train_round(vector, MEANS, SCALES, Charges())
    second = training.train_round(vector, MEANS, SCALES, Charges())
    assert not np.array_equal(first, second)


def test_a_refused_charge_trains_nothing() -> None:
    p, data = plan(), dataset()
    training = RunTraining(p, data, STATS)
    before = [t.detach().clone() for t in training.trainer.model.parameters()]

    def refuse(sigma: float, q: float, steps: int) -> None:
        raise RuntimeError("over budget")

    with pytest.raises(RuntimeError, match="over budget"):
        training.train_round(start(p), MEANS, SCALES, refuse)
    after = list(training.trainer.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert training.trainer.accountant.history == []


def test_a_larger_prior_needs_more_noise() -> None:
    p, data = plan(), dataset()
    alone = RunTraining(p, data, ()).noise_multiplier
    after_stats = RunTraining(p, data, STATS).noise_multiplier
    assert after_stats > alone


def test_too_few_training_rows_is_a_training_error() -> None:
    data = dataset(n=400)
    data.holdout[:] = True
    data.holdout[0] = False
    with pytest.raises(TrainingError, match="fewer than 2 patients"):
        RunTraining(plan(), data, STATS)
