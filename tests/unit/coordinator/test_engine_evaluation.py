"""Which rounds the engine evaluates: by default only the final model (one metrics release, so
the calibrated metrics σ is spent once); with `training.evaluate_every` = k also every k-th
round. Driven with test_engine's simulated sites (real secagg clients, a fake clock)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from coordinator.effects import Phase, RunStatus
from coordinator.engine import RunEngine
from federation.metrics_noise import planned_evaluations
from federation.plan import RunPlan, parse_plan
from tests.unit.coordinator.test_engine import PLAN, FakeSite, _aggregates

pytestmark = pytest.mark.unit


def _plan(rounds: int, every: int | None) -> RunPlan:
    text = PLAN.format(rounds=rounds, attempts=3)
    line = f"evaluate_every = {rounds}\n"
    assert line in text
    return parse_plan(text.replace(line, "" if every is None else f"evaluate_every = {every}\n"))


def _evaluated_rounds(plan: RunPlan, n_sites: int = 3) -> tuple[RunEngine, list[int]]:
    names = [f"site-{i}" for i in range(n_sites)]
    ids = (f"task-{i}" for i in itertools.count())
    now = 1000.0
    engine, _ = RunEngine.start("run-1", plan, names, now, ids=lambda: next(ids))
    sites = {name: FakeSite(name, np.random.default_rng(i)) for i, name in enumerate(names)}
    rounds: list[int] = []
    for _ in range(10_000):
        if engine.progress().phase in (Phase.FINISHING, Phase.DONE):
            break
        for name in names:
            task = engine.task_for(name)
            if task is not None:
                effects = engine.on_result(name, sites[name].answer(task, engine), now)
                rounds += [r for p, r, _, _, _ in _aggregates(effects) if p == "metrics"]
    return engine, rounds


def test_by_default_only_the_final_round_is_evaluated() -> None:
    plan = _plan(4, None)
    assert plan.training.evaluate_every == 0
    engine, rounds = _evaluated_rounds(plan)
    assert engine.progress().status is RunStatus.COMPLETED, engine.progress().message
    assert rounds == [4]
    assert len(rounds) == planned_evaluations(4, plan.training.evaluate_every)


@pytest.mark.parametrize(("every", "expected"), [(1, [1, 2, 3, 4, 5]), (2, [2, 4, 5]), (5, [5])])
def test_evaluate_every_k_adds_every_kth_round_and_the_final_one(
    every: int, expected: list[int]
) -> None:
    plan = _plan(5, every)
    engine, rounds = _evaluated_rounds(plan)
    assert engine.progress().status is RunStatus.COMPLETED, engine.progress().message
    assert rounds == expected
    # the plan's metrics σ was calibrated for exactly the releases the engine makes
    assert len(rounds) == planned_evaluations(5, every)
