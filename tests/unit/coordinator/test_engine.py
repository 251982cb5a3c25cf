"""The round engine, sans-I/O: simulated sites with real secagg clients and a fake clock."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.engine import (
    PendingTask,
    ResultRejected,
    RunEngine,
    RunStatus,
    SiteResult,
    TaskKind,
)
from federation.plan import parse_plan
from federation.releases import MAX_SITES, MetricsLayout, Purpose, StatsLayout, stats_vector
from secagg.client import ClientSession
from secagg.config import SessionConfig
from secagg.quantize import quantize

pytestmark = pytest.mark.unit

PLAN = """
name = "engine"
quorum = 2
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
cuts = [1000.0, 2000.0, 3000.0]
[model]
kind = "linear"
[training]
rounds = {rounds}
evaluate_every = {rounds}
[secagg]
stage_timeout_s = 10.0
train_timeout_s = 60.0
max_attempts = {attempts}
"""

KEYS = {f"site-{i}": ec.generate_private_key(ec.SECP256R1()) for i in range(6)}


@dataclass
class FakeSite:
    """Answers tasks like a site agent would, minus the data science."""

    name: str
    rng: np.random.Generator
    released: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    sessions: dict[tuple[str, int, int], ClientSession] = field(default_factory=dict)

    def answer(self, task: PendingTask, engine: RunEngine) -> SiteResult:
        kind = task.kind
        payload = b""
        if kind in (TaskKind.FEDERATED_STATS, TaskKind.TRAIN, TaskKind.EVALUATE):
            self.released[(task.purpose.value, task.round)] = self._release(task, engine)
        elif kind is TaskKind.ADVERTISE_KEYS:
            config = SessionConfig.from_bytes(task.session_config)
            roster = dict(task.participants)
            mine = next(i for i, s in roster.items() if s == self.name)
            peers = {i: KEYS[s].public_key() for i, s in roster.items()}
            session = ClientSession(config, mine, KEYS[self.name], peers)
            self.sessions[(task.purpose.value, task.round, task.attempt)] = session
            payload = session.advertise_keys()
        elif task.purpose is not None:
            session = self.sessions[(task.purpose.value, task.round, task.attempt)]
            if kind is TaskKind.SHARE_KEYS:
                payload = session.share_keys(task.secagg_message)
            elif kind is TaskKind.MASKED_INPUT:
                vector = self.released[(task.purpose.value, task.round)]
                payload = session.masked_input(task.secagg_message, vector)
            elif kind is TaskKind.CONSISTENCY_CHECK:
                payload = session.consistency_check(task.secagg_message)
            elif kind is TaskKind.UNMASK:
                payload = session.unmask(task.secagg_message)
        return SiteResult(task_id=task.task_id, kind=kind, payload=payload)

    def _release(self, task: PendingTask, engine: RunEngine) -> np.ndarray:
        plan = engine.plan
        if task.purpose is Purpose.STATS:
            n = 200
            raw = np.column_stack([self.rng.uniform(40, 110, n), self.rng.integers(0, 2, n)])
            time = self.rng.uniform(1, 4000, n)
            event = self.rng.integers(0, 2, n)
            events, at_risk = plan.time_grid.interval_counts(time, event)
            values = stats_vector(raw, events, at_risk, plan.feature_schema)
            layout = StatsLayout.for_schema(plan.feature_schema, plan.time_grid.n_intervals)
            return quantize(values, layout.quantization(MAX_SITES))
        if task.purpose is Purpose.UPDATE:
            delta = self.rng.normal(0, 0.05, engine.n_parameters)
            return quantize(delta, engine._update_layout().quantization(MAX_SITES))
        values = np.array([100.0, 30.0, 5.0, 200.0, 260.0])
        return quantize(MetricsLayout().encode(values), MetricsLayout().quantization(MAX_SITES))


def _run(
    n_sites: int,
    rounds: int = 2,
    drop: dict[tuple[TaskKind, int], set[str]] | None = None,
    attempts: int = 3,
) -> tuple[RunEngine, dict[str, FakeSite], list[tuple[str, int, list[str], np.ndarray]]]:
    """Drive an engine to the end; sites in drop[(kind, round)] go silent on that task."""
    plan = parse_plan(PLAN.format(rounds=rounds, attempts=attempts))
    names = [f"site-{i}" for i in range(n_sites)]
    ids = (f"task-{i}" for i in itertools.count())
    clock = [1000.0]
    engine = RunEngine.start("run-1", plan, names, clock[0], ids=lambda: next(ids))
    sites = {name: FakeSite(name, np.random.default_rng(i)) for i, name in enumerate(names)}
    silent: set[str] = set()
    aggregates: list[tuple[str, int, list[str], np.ndarray]] = []
    for _ in range(10_000):
        if engine.phase in ("finishing", "done"):
            break
        progressed = False
        for name in names:
            task = engine.task_for(name)
            if task is None or name in silent:
                continue
            if drop and name in drop.get((task.kind, task.round), set()):
                silent.add(name)  # crashed: never answers again
                continue
            engine.on_result(name, sites[name].answer(task, engine), clock[0])
            progressed = True
            if engine.completed_aggregate is not None:
                record, total = engine.completed_aggregate
                aggregates.append((record.purpose.value, record.round, record.survivors, total))
                engine.completed_aggregate = None
        if not progressed:
            clock[0] += 61.0  # let every deadline pass
            engine.tick(clock[0])
            if engine.completed_aggregate is not None:
                record, total = engine.completed_aggregate
                aggregates.append((record.purpose.value, record.round, record.survivors, total))
                engine.completed_aggregate = None
    return engine, sites, aggregates


def _check_exact(
    sites: dict[str, FakeSite], aggregates: list[tuple[str, int, list[str], np.ndarray]]
) -> None:
    for purpose, round_, survivors, total in aggregates:
        expected = np.zeros_like(total)
        for name in survivors:
            expected += sites[name].released[(purpose, round_)]
        np.testing.assert_array_equal(total, expected)


def test_full_run_completes_and_every_sum_is_exact() -> None:
    engine, sites, aggregates = _run(3)
    assert engine.status is RunStatus.COMPLETED, engine.message
    assert [(p, r) for p, r, _, _ in aggregates] == [
        ("stats", 0),
        ("update", 1),
        ("update", 2),
        ("metrics", 2),
    ]
    _check_exact(sites, aggregates)
    assert engine.global_round == 2 and engine.global_vector is not None
    assert engine.history[-1].metrics["c_windowed"] == pytest.approx(200 / 260, abs=0.01)


STAGES = [
    TaskKind.TRAIN,
    TaskKind.ADVERTISE_KEYS,
    TaskKind.SHARE_KEYS,
    TaskKind.MASKED_INPUT,
    TaskKind.CONSISTENCY_CHECK,
    TaskKind.UNMASK,
]


@pytest.mark.parametrize("stage", STAGES, ids=lambda k: k.value)
def test_one_site_drops_at_each_stage_and_the_round_completes(stage: TaskKind) -> None:
    engine, sites, aggregates = _run(4, rounds=1, drop={(stage, 1): {"site-3"}})
    assert engine.status is RunStatus.COMPLETED, engine.message
    update = next(a for a in aggregates if a[0] == "update")
    in_sum = stage in (TaskKind.CONSISTENCY_CHECK, TaskKind.UNMASK)
    assert ("site-3" in update[2]) is in_sum
    _check_exact(sites, aggregates)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_sites=st.integers(min_value=3, max_value=6),
    stage=st.sampled_from(STAGES),
    data=st.data(),
)
def test_any_dropout_pattern_gives_exact_sums_or_a_clean_failure(
    n_sites: int, stage: TaskKind, data: st.DataObject
) -> None:
    names = [f"site-{i}" for i in range(n_sites)]
    dropped = set(data.draw(st.lists(st.sampled_from(names), unique=True, max_size=n_sites - 1)))
    engine, sites, aggregates = _run(n_sites, rounds=1, drop={(stage, 1): dropped})
    _check_exact(sites, aggregates)
    if engine.status is RunStatus.COMPLETED:
        assert any(a[0] == "update" for a in aggregates)
    else:
        assert engine.status is RunStatus.FAILED and "failed" in engine.message


def test_a_replayed_result_is_refused_and_leaves_the_engine_unchanged() -> None:
    plan = parse_plan(PLAN.format(rounds=1, attempts=3))
    ids = (f"task-{i}" for i in itertools.count())
    engine = RunEngine.start("run-1", plan, ["site-0", "site-1"], 0.0, ids=lambda: next(ids))
    offer = engine.task_for("site-0")
    assert offer is not None
    answer = SiteResult(task_id=offer.task_id, kind=offer.kind)
    assert engine.on_result("site-0", answer, 1.0) is False
    assert engine.on_result("site-0", answer, 1.0) is True  # identical re-push: idempotent
    engine.on_result(
        "site-1", SiteResult(task_id=engine.task_for("site-1").task_id, kind=offer.kind), 1.0
    )
    assert engine.phase == "stats"
    stats = engine.task_for("site-0")
    engine.on_result("site-0", SiteResult(task_id=stats.task_id, kind=stats.kind), 2.0)
    before = engine.snapshot()[0]
    with pytest.raises(ResultRejected) as caught:
        engine.on_result("site-0", answer, 3.0)  # the old plan answer, replayed
    assert caught.value.code == "stale"
    assert engine.snapshot()[0] == before


def test_late_and_mismatched_results_are_refused() -> None:
    plan = parse_plan(PLAN.format(rounds=1, attempts=3))
    engine = RunEngine.start("run-1", plan, ["site-0", "site-1"], 0.0)
    offer = engine.task_for("site-0")
    with pytest.raises(ResultRejected, match="answers a plan_offer"):
        engine.on_result("site-0", SiteResult(task_id=offer.task_id, kind=TaskKind.TRAIN), 1.0)
    with pytest.raises(ResultRejected) as caught:
        engine.on_result("site-0", SiteResult(task_id=offer.task_id, kind=offer.kind), 1e9)
    assert caught.value.code == "late"


def test_too_few_acceptances_fails_with_the_refusal_reasons() -> None:
    plan = parse_plan(PLAN.format(rounds=1, attempts=3))
    engine = RunEngine.start("run-1", plan, ["site-0", "site-1"], 0.0)
    for name in ("site-0", "site-1"):
        task = engine.task_for(name)
        engine.on_result(
            name,
            SiteResult(
                task_id=task.task_id,
                kind=task.kind,
                error_code="policy_refused",
                error_message=f"{name}: feature age not allowed",
            ),
            1.0,
        )
    assert engine.status is RunStatus.FAILED
    assert "feature age not allowed" in engine.message


def test_restore_mid_secagg_retries_with_a_fresh_session_and_completes() -> None:
    plan = parse_plan(PLAN.format(rounds=1, attempts=3))
    names = ["site-0", "site-1", "site-2"]
    engine = RunEngine.start("run-1", plan, names, 0.0)
    sites = {n: FakeSite(n, np.random.default_rng(i)) for i, n in enumerate(names)}
    clock = 1.0
    while not (engine.phase == "train" and engine.step == "secagg"):
        for name in names:
            task = engine.task_for(name)
            if task is not None:
                engine.on_result(name, sites[name].answer(task, engine), clock)
    attempt = engine.attempt
    state, vectors = engine.snapshot()
    restored = RunEngine.restore(state, vectors, clock)  # the old process (and session) died
    assert restored.attempt == attempt + 1 and restored.step == "local"
    for _ in range(500):
        if restored.phase in ("finishing", "done"):
            break
        for name in names:
            task = restored.task_for(name)
            if task is not None:
                restored.on_result(name, sites[name].answer(task, restored), clock)
    assert restored.status is RunStatus.COMPLETED, restored.message


def test_stop_ends_the_run_and_tells_the_sites() -> None:
    plan = parse_plan(PLAN.format(rounds=1, attempts=3))
    engine = RunEngine.start("run-1", plan, ["site-0", "site-1"], 0.0)
    engine.stop("operator said so", 5.0)
    assert engine.status is RunStatus.STOPPED
    assert all(engine.task_for(s).kind is TaskKind.RUN_FINISHED for s in ("site-0", "site-1"))
