"""The DP-noise intervals of the linear model's hazard ratios (`federation/hazard_intervals.py`).

The coverage test has a known truth: every feature column is zero, so every patient's gradient
with respect to β is exactly zero and the sites' real DP-SGD (`site_agent.train.LocalTrainer`,
Opacus) moves β by its Gaussian noise alone; the coefficients the run would reach without noise
are then its starting ones. Weighted FedAvg over three sites and several rounds, at a server step
η ≠ 1, then gives final coefficients whose 95 % intervals must cover the start about 95 % of the
time: each of the many coordinates is an independent draw of the noise, so the count of covered
ones is binomial and a wrong scale (a missed step, a wrong batch size) fails the test.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from federation.hazard_intervals import (
    RETRY_RESERVE_ROUNDS,
    Z95,
    IntervalUnavailable,
    coefficient_noise,
    hazard_ratio_intervals,
    training_noise_multiplier,
)
from federation.noise import stats_noise_multiplier
from federation.plan import RunPlan
from site_agent import train
from site_agent.accounting import Entry
from survival.spec import ModelSpec

pytestmark = pytest.mark.unit

SITES = ("a", "b", "c")
ROWS = {"a": 600, "b": 600, "c": 600}
CUTS = [100.0, 200.0, 300.0]


def _plan(**training: Any) -> RunPlan:
    return RunPlan.model_validate(
        {
            "name": "hr",
            "features": [{"kind": "numeric", "name": "age", "min": 0, "max": 100}],
            "time_grid": {"cuts": CUTS},
            "model": {"kind": "linear"},
            "training": {
                "rounds": 3,
                "local_epochs": 2,
                "batch_size": 256,
                "learning_rate": 0.5,
                "optimizer": "sgd",
                "max_grad_norm": 2.0,
                "server_learning_rate": 0.7,
                **training,
            },
            "privacy": {"epsilon": 3.0, "delta": 1e-5, "accountant": "rdp"},
        }
    )


def _history(rounds: int, rows: dict[str, int]) -> list[dict[str, Any]]:
    stats = {"purpose": "stats", "round": 0, "survivors": list(rows)}
    stats["metrics"] = {"patients": float(sum(rows.values()))}
    updates = [
        {"purpose": "update", "round": r, "survivors": list(rows)} for r in range(1, 1 + rounds)
    ]
    return [stats, *updates]


def test_the_sites_own_calibration_is_reproduced_and_never_undercut() -> None:
    assert RETRY_RESERVE_ROUNDS == train.RETRY_RESERVE_ROUNDS
    for accountant in ("rdp", "pld"):
        plan = _plan()
        plan = plan.model_copy(
            update={"privacy": plan.privacy.model_copy(update={"accountant": accountant})}
        )
        prior = [Entry(stats_noise_multiplier(plan), 1.0, 1)]
        trainer = train.LocalTrainer(
            plan.model, 1, 3, train.plan_trainer_config(plan, 600), 600, prior=prior
        )
        ours = training_noise_multiplier(plan, 600)
        if accountant == "rdp":  # the same accountant: the same σ, up to the bisections' 0.1 %
            assert ours == pytest.approx(trainer.noise_multiplier, rel=3e-3)
        else:  # PLD is tighter: the site's σ is smaller, the interval conservative
            assert ours >= trainer.noise_multiplier


def test_the_interval_covers_the_noise_free_coefficients_95_percent_of_the_time() -> None:
    plan = _plan()
    t = plan.training
    n_features, n_intervals, trials = 400, len(CUTS), 3
    prior = [Entry(stats_noise_multiplier(plan), 1.0, 1)]
    noise = coefficient_noise(plan, _history(t.rounds, ROWS), site_rows=ROWS)
    start = np.zeros(n_intervals + n_features, dtype=np.float32)
    start[:n_intervals] = -3.0
    covered = total = 0
    rng = np.random.default_rng(7)
    for trial in range(trials):
        trainers = {
            site: train.LocalTrainer(
                ModelSpec(kind="linear"),
                n_features,
                n_intervals,
                train.plan_trainer_config(plan, ROWS[site]),
                ROWS[site],
                seed=100 * trial + i,
                prior=prior,
            )
            for i, site in enumerate(SITES)
        }
        data = {
            site: (
                np.zeros((n, n_features), dtype=np.float32),
                rng.integers(0, n_intervals, n),
                rng.integers(0, 2, n),
            )
            for site, n in ROWS.items()
        }
        vector = start.copy()
        for _ in range(t.rounds):
            mean = np.zeros(vector.size)
            for site in SITES:
                delta = trainers[site].train_round(vector, *data[site]).delta
                mean += ROWS[site] / sum(ROWS.values()) * delta
            vector = (vector + t.server_learning_rate * mean).astype(np.float32)
        beta = vector[n_intervals:].astype(np.float64)
        covered += int(np.sum(np.abs(beta) <= Z95 * noise.sd))
        total += beta.size
    # binomial(total, 0.95): 4 standard deviations either side (fails if the sd is ~8 % off)
    tolerance = 4.0 * math.sqrt(total * 0.95 * 0.05)
    assert abs(covered - 0.95 * total) <= tolerance, (covered, total, noise.sd)


def test_the_noise_scales_with_the_server_step_and_adds_over_rounds() -> None:
    one = coefficient_noise(_plan(server_learning_rate=1.0), _history(3, ROWS), site_rows=ROWS)
    half = coefficient_noise(_plan(server_learning_rate=0.5), _history(3, ROWS), site_rows=ROWS)
    assert half.sd == pytest.approx(one.sd / 2.0)
    # the export's round bounds the rounds counted; variances add, so sd grows as √rounds
    first = coefficient_noise(_plan(), _history(3, ROWS), export_round=1, site_rows=ROWS)
    every = coefficient_noise(_plan(), _history(3, ROWS), site_rows=ROWS)
    assert (first.rounds, every.rounds) == (1, 3)
    assert every.sd == pytest.approx(first.sd * math.sqrt(3))


def test_without_site_sizes_the_sites_share_the_released_count() -> None:
    noise = coefficient_noise(_plan(), _history(3, ROWS))
    assert noise.equal_sites_assumed and noise.site_rows == (600.0, 600.0, 600.0)
    assert noise.sd == pytest.approx(
        coefficient_noise(_plan(), _history(3, ROWS), site_rows=ROWS).sd
    )


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"optimizer": "adam"}, "training.optimizer"),
        ({"server_optimizer": "fedadam"}, "training.server_optimizer"),
        ({"mode": "distributed"}, "training.mode"),
    ],
)
def test_a_plan_without_a_closed_form_is_refused_with_its_cause(
    change: dict[str, Any], named: str
) -> None:
    with pytest.raises(IntervalUnavailable, match=named):
        coefficient_noise(_plan(**change), _history(3, ROWS))


class _Model:
    """What `hazard_ratio_intervals` reads of a loaded export."""

    def __init__(self, plan: RunPlan, beta: list[float], stds: list[float]) -> None:
        self.beta = beta
        self.card = {
            "plan": plan.model_dump(mode="json"),
            "round": plan.training.rounds,
            "history": _history(plan.training.rounds, ROWS),
            "standardization": {"means": [0.0] * len(beta), "stds": stds},
        }
        self.stds = stds

    def hazard_ratios(self, *, per_unit: bool = False) -> dict[str, float]:
        scale = self.stds if per_unit else [1.0] * len(self.beta)
        return {
            f"f{i}": math.exp(b / s) for i, (b, s) in enumerate(zip(self.beta, scale, strict=True))
        }


def test_intervals_are_symmetric_in_log_and_per_unit_divides_by_the_sd() -> None:
    model = _Model(_plan(), [0.4, -0.2], [10.0, 0.5])
    sd = coefficient_noise(_plan(), _history(3, ROWS)).sd
    per_sd = hazard_ratio_intervals(model)
    for row, beta in zip(per_sd, model.beta, strict=True):
        assert row.lower < row.ratio < row.upper
        assert math.log(row.upper) - beta == pytest.approx(Z95 * sd)
        assert beta - math.log(row.lower) == pytest.approx(Z95 * sd)
    per_unit = hazard_ratio_intervals(model, per_unit=True)
    for row, std in zip(per_unit, model.stds, strict=True):
        assert row.log_sd == pytest.approx(sd / std)
    wider = hazard_ratio_intervals(model, level=0.99)
    assert all(w.upper > r.upper for w, r in zip(wider, per_sd, strict=True))
