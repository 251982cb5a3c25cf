"""Each aggregation record keeps the ε every site had reported when the step was summed, so the
model card (and the report drawn from it) shows ε over rounds without the audit log."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from coordinator.effects import Phase, RoundRecord
from coordinator.engine import RunEngine
from federation.releases import Purpose
from federation.tasks import LOCAL_TASK_KIND
from tests.unit.coordinator.test_engine import FakeSite, _plan

pytestmark = pytest.mark.unit


def test_every_update_record_keeps_the_epsilon_reported_up_to_its_round() -> None:
    names = [f"site-{i}" for i in range(3)]
    ids = (f"task-{i}" for i in itertools.count())
    engine, _ = RunEngine.start("run-1", _plan(rounds=3), names, 1000.0, ids=lambda: next(ids))
    sites = {n: FakeSite(n, np.random.default_rng(i)) for i, n in enumerate(names)}
    reported: dict[tuple[str, int], float] = {}
    for _ in range(10_000):
        if engine.phase in (Phase.FINISHING, Phase.DONE):
            break
        for name in names:
            task = engine.task_for(name)
            if task is None:
                continue
            result = sites[name].answer(task, engine)
            if task.kind in LOCAL_TASK_KIND.values():  # what a site reports after a charge
                eps = 0.25 * (task.round + 1) + 0.01 * names.index(name)
                reported[(name, task.round)] = eps
                result = dataclasses.replace(result, epsilon_run=eps, epsilon_lifetime=eps)
            engine.on_result(name, result, 1000.0)
    updates = [r for r in engine.history if r.purpose is Purpose.UPDATE]
    assert [r.round for r in updates] == [1, 2, 3]
    for record in updates:
        assert record.epsilon == {n: reported[(n, record.round)] for n in names}
    again = RoundRecord.from_json(updates[-1].to_json())
    assert again == updates[-1]
    older = {k: v for k, v in updates[-1].to_json().items() if k != "epsilon"}
    assert RoundRecord.from_json(older).epsilon == {}  # a record stored before the field
