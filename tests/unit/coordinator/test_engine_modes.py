"""The engine and the aggregation under the plan's modes: weighted FedAvg, distributed DP-SGD,
and sites that hold nothing out (the evaluation is skipped, the run is not failed)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from coordinator import aggregation
from coordinator.effects import Phase, RunStatus
from coordinator.engine import RunEngine
from coordinator.messages import SiteResult
from federation import distributed
from federation.plan import parse_plan
from federation.releases import Purpose, UpdateLayout
from federation.tasks import TaskKind
from secagg.quantize import quantize
from tests.unit.coordinator.test_engine import PLAN, FakeSite

pytestmark = pytest.mark.unit


def _plan(extra: str = "", rounds: int = 2):  # type: ignore[no-untyped-def]
    text = PLAN.format(rounds=rounds, attempts=3)
    return parse_plan(text.replace("[training]", f"[training]\n{extra}"))


def test_weighted_fedavg_is_the_cohort_weighted_mean() -> None:
    plan = _plan()
    layout = aggregation.update_layout(plan)
    assert layout.weighted and layout.length == aggregation.n_parameters(plan) + 1
    rng = np.random.default_rng(0)
    deltas = [rng.normal(0, 0.1, layout.n_parameters) for _ in range(3)]
    counts = [30.0, 200.0, 770.0]
    total = np.zeros(layout.length, dtype=np.uint32)
    for delta, count in zip(deltas, counts, strict=True):
        total += quantize(layout.weighted_release(delta, count / 1000.0), layout.quantization(64))
    mean = aggregation.mean_update(plan, total, 3, 3)
    expected = sum(c * d for c, d in zip(counts, deltas, strict=True)) / sum(counts)
    np.testing.assert_allclose(mean, expected, atol=1e-4)
    unweighted = np.mean(deltas, axis=0)
    assert np.abs(mean - unweighted).max() > 1e-2  # the weights matter here


def test_unweighted_fedavg_is_the_plain_mean() -> None:
    plan = _plan('aggregation = "unweighted"')
    layout = aggregation.update_layout(plan)
    assert not layout.weighted
    rng = np.random.default_rng(1)
    deltas = [rng.normal(0, 0.1, layout.n_parameters) for _ in range(3)]
    total = np.zeros(layout.length, dtype=np.uint32)
    for delta in deltas:
        total += quantize(delta, layout.quantization(64))
    np.testing.assert_allclose(
        aggregation.mean_update(plan, total, 3, 3), np.mean(deltas, axis=0), atol=1e-4
    )


def test_a_weighted_release_clips_before_weighting() -> None:
    layout = UpdateLayout(4, clip_norm=1.0, coord_bound=2.0, scale_bits=18, weighted=True)
    release = layout.weighted_release(np.array([3.0, 4.0, 0.0, 0.0]), 0.5)
    np.testing.assert_allclose(release, [0.3, 0.4, 0.0, 0.0, 0.5])
    assert layout.weighted_release(np.zeros(4), 7.0)[-1] == 1.0  # weights stay in [0, 1]


def test_distributed_update_is_minus_the_gradient_over_the_expected_batch() -> None:
    plan = _plan('mode = "distributed"\nsample_rate = 0.5')
    encoding = distributed.encoding(plan, Purpose.UPDATE)
    rng = np.random.default_rng(2)
    sums = [rng.normal(0, 3, encoding.length) for _ in range(3)]
    total = np.zeros(encoding.length, dtype=np.uint32)
    for s in sums:
        total += encoding.to_uint32(encoding.encode(s))
    step = aggregation.mean_update(plan, total, 3, 3, cohort=400.0)
    np.testing.assert_allclose(step, -np.sum(sums, axis=0) / 200.0, atol=1.0 / encoding.scale)


class NoHoldout(FakeSite):
    """A site that holds nothing out: it answers every evaluation with `no_holdout`."""

    def answer(self, task, engine):  # type: ignore[no-untyped-def]
        if task.kind is TaskKind.EVALUATE:
            return SiteResult(task.task_id, task.kind, error_code="no_holdout", error_message="")
        return super().answer(task, engine)


@pytest.mark.parametrize("holding_out", [0, 1])
def test_evaluation_is_skipped_when_too_few_sites_hold_data_out(holding_out: int) -> None:
    plan = _plan()  # quorum 2: one site holding out is too few
    names = ["site-0", "site-1", "site-2"]
    ids = (f"task-{i}" for i in itertools.count())
    engine, _ = RunEngine.start("run-1", plan, names, 1000.0, ids=lambda: next(ids))
    sites = {
        name: (FakeSite if i < holding_out else NoHoldout)(name, np.random.default_rng(i))
        for i, name in enumerate(names)
    }
    for _ in range(1000):
        if engine.progress().phase in (Phase.FINISHING, Phase.DONE):
            break
        for name in names:
            task = engine.task_for(name)
            if task is not None:
                engine.on_result(name, sites[name].answer(task, engine), 1000.0)
    progress = engine.progress()
    assert progress.status is RunStatus.COMPLETED, progress.message
    assert [r.purpose for r in progress.history] == [Purpose.STATS, Purpose.UPDATE, Purpose.UPDATE]
    assert "not evaluated" in progress.message or progress.message == "completed"
    assert not progress.refusals  # holding nothing out is not a refusal


def test_per_site_baselines_leave_the_global_baseline_alone() -> None:
    plan = parse_plan(
        PLAN.format(rounds=2, attempts=3).replace("[model]\n", '[model]\nbaseline = "per-site"\n')
    )
    layout = aggregation.update_layout(plan)
    k = plan.time_grid.n_intervals
    assert layout.n_parameters == aggregation.n_parameters(plan) - k
    delta = np.full(layout.n_parameters, 0.1)
    total = quantize(layout.weighted_release(delta, 0.5), layout.quantization(64))
    step = aggregation.mean_update(plan, total, 2, 1)
    assert step.shape == (aggregation.n_parameters(plan),)
    np.testing.assert_array_equal(step[:k], 0.0)
    np.testing.assert_allclose(step[k:], 0.1, atol=1e-4)
