"""The round engine, sans-I/O: simulated sites with real secagg clients and a fake clock."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator import aggregation, snapshot
from coordinator.effects import (
    DuplicateResult,
    Effect,
    Phase,
    ProgressChanged,
    RunFinished,
    RunStatus,
    StepAggregated,
    StepPart,
    TasksChanged,
)
from coordinator.engine import RunEngine
from coordinator.messages import PendingTask, ResultRejected, SiteResult
from federation.plan import RunPlan, parse_plan
from federation.releases import MAX_SITES, MetricsLayout, Purpose, StatsLayout, stats_vector
from federation.sessions import minimum_session_size, session_threshold
from federation.tasks import TaskKind
from secagg.client import ClientSession
from secagg.config import SessionConfig, Stage
from secagg.prg import Csprng
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
        assert task.purpose is not None
        # stochastic rounding from a fixed key: the same data gives the same release in every run
        key = hashlib.sha256(f"{self.name}/{task.purpose.value}/{task.round}".encode()).digest()
        if task.purpose is Purpose.STATS:
            n = 200
            raw = np.column_stack([self.rng.uniform(40, 110, n), self.rng.integers(0, 2, n)])
            time = self.rng.uniform(1, 4000, n)
            event = self.rng.integers(0, 2, n)
            events, at_risk = plan.time_grid.interval_counts(time, event)
            values = stats_vector(raw, events, at_risk, plan.feature_schema)
            layout = StatsLayout.for_schema(plan.feature_schema, plan.time_grid.n_intervals)
            return quantize(values, layout.quantization(MAX_SITES), Csprng(key))
        if task.purpose is Purpose.UPDATE:
            delta = self.rng.normal(0, 0.05, aggregation.n_parameters(plan))
            layout = aggregation.update_layout(plan)
            release = layout.weighted_release(delta, 0.25) if layout.weighted else delta
            return quantize(release, layout.quantization(MAX_SITES), Csprng(key))
        values = np.array([100.0, 30.0, 5.0, 200.0, 260.0, 28.0, 7.0])  # O/E = 28 / (4·7)
        layout_m = MetricsLayout()
        return quantize(layout_m.encode(values), layout_m.quantization(MAX_SITES), Csprng(key))


Aggregates = list[tuple[str, int, int, list[str], np.ndarray]]


def _aggregates(effects: list[Effect]) -> Aggregates:
    return [
        (e.record.purpose.value, e.record.round, e.record.attempt, e.record.survivors, e.total)
        for e in effects
        if isinstance(e, StepAggregated)
    ]


def _plan(rounds: int = 2, attempts: int = 3, optimizer: str = "fedavg") -> RunPlan:
    text = PLAN.format(rounds=rounds, attempts=attempts)
    return parse_plan(text.replace("[training]", f'[training]\nserver_optimizer = "{optimizer}"'))


def _run(
    n_sites: int,
    rounds: int = 2,
    drop: dict[tuple[TaskKind, int], set[str]] | None = None,
    attempts: int = 3,
    optimizer: str = "fedavg",
    answer: Callable[[RunEngine, str, PendingTask, SiteResult], list[Effect]] | None = None,
) -> tuple[RunEngine, dict[str, FakeSite], Aggregates]:
    """Drive an engine to the end; sites in drop[(kind, round)] go silent on that task.
    `answer(engine, site, task, result)` feeds each result (default: `engine.on_result`), for
    tests that change or check around it."""
    plan = _plan(rounds, attempts, optimizer)
    names = [f"site-{i}" for i in range(n_sites)]
    ids = (f"task-{i}" for i in itertools.count())
    clock = [1000.0]
    engine, _ = RunEngine.start("run-1", plan, names, clock[0], ids=lambda: next(ids))
    sites = {name: FakeSite(name, np.random.default_rng(i)) for i, name in enumerate(names)}
    silent: set[str] = set()
    aggregates: Aggregates = []
    for _ in range(10_000):
        if engine.progress().phase in (Phase.FINISHING, Phase.DONE):
            break
        aggregates += _aggregates(_tick(engine, clock[0]))  # no deadline passed: nothing moves
        progressed = False
        for name in names:
            task = engine.task_for(name)
            if task is None or name in silent:
                continue
            if drop and name in drop.get((task.kind, task.round), set()):
                silent.add(name)  # crashed: never answers again
                continue
            result = sites[name].answer(task, engine)
            if answer is None:
                effects = engine.on_result(name, result, clock[0])
            else:
                effects = answer(engine, name, task, result)
            aggregates += _aggregates(effects)
            progressed = True
        if not progressed:
            clock[0] += 61.0  # let every deadline pass
            aggregates += _aggregates(_tick(engine, clock[0]))
    return engine, sites, aggregates


def _tick(engine: RunEngine, now: float) -> list[Effect]:
    """`engine.tick`, checking the promise the coordinator's tick relies on to skip saving: a
    tick that reports no effect changed nothing a snapshot holds; and that `snapshot.dump`'s
    reused parts (plan, history, tasks) are what converting them afresh gives, and that
    `restart_key` is the same whether it builds the changing state or is handed it."""
    import json

    state = snapshot.dump(engine)[0]
    # the plan's and history's JSON are reused between dumps: still exactly a fresh conversion
    assert state["history"] == [record.to_json() for record in engine.history]
    assert state["plan"] == engine.plan.model_dump(mode="json")
    # so are the tasks' documents, built once per task
    fresh = [snapshot._task_json(task) for task in engine.tasks.values()]
    assert state["tasks"] == (fresh if snapshot.resumable_tasks(engine) else [])
    changing = snapshot.changing_state(engine)
    assert snapshot.restart_key(engine, changing) == snapshot.restart_key(engine)
    assert "answered" in changing and "history_length" not in changing  # not changed by it
    before = json.dumps(state, sort_keys=True)
    effects = engine.tick(now)
    if not effects:
        assert json.dumps(snapshot.dump(engine)[0], sort_keys=True) == before
    return effects


def _check_exact(sites: dict[str, FakeSite], aggregates: Aggregates) -> None:
    for purpose, round_, _attempt, survivors, total in aggregates:
        expected = np.zeros_like(total)
        for name in survivors:
            expected += sites[name].released[(purpose, round_)]
        np.testing.assert_array_equal(total, expected)


def test_full_run_completes_and_every_sum_is_exact() -> None:
    engine, sites, aggregates = _run(3)
    progress = engine.progress()
    assert progress.status is RunStatus.COMPLETED, progress.message
    assert [(p, r) for p, r, _, _, _ in aggregates] == [
        ("stats", 0),
        ("update", 1),
        ("update", 2),
        ("metrics", 2),
    ]
    _check_exact(sites, aggregates)
    assert progress.global_round == 2 and engine.global_vector is not None
    assert progress.history[-1].metrics["c_windowed"] == pytest.approx(200 / 260, abs=0.01)
    assert progress.history[-1].metrics["oe_ratio"] == pytest.approx(1.0, abs=0.01)


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
    assert engine.progress().status is RunStatus.COMPLETED, engine.progress().message
    update = next(a for a in aggregates if a[0] == "update")
    in_sum = stage in (TaskKind.CONSISTENCY_CHECK, TaskKind.UNMASK)
    assert ("site-3" in update[3]) is in_sum
    _check_exact(sites, aggregates)


def _expected_update(
    plan: RunPlan, names: list[str], stage: TaskKind, dropped: set[str]
) -> tuple[int, set[str]] | None:
    """The round-1 update the protocol promises, worked out from the rules alone: (attempt,
    sites in the sum), or None when no attempt can have t survivors at every stage.

    Attempt 0's session has all n sites and threshold t(n). A site dropping at TRAIN never joins
    it; one dropping at a secagg stage leaves n − d survivors there, enough iff n − d ≥ t(n)
    (after MaskedInput its input is already in the sum). Otherwise the session aborts and the
    step is retried; the dropped sites stay silent, so attempt 1's session is the n − d
    survivors, whose threshold t(n − d) ≤ n − d: it completes iff n − d is at least the plan's
    minimum session size.
    """
    alive = set(names) - dropped
    if len(alive) < minimum_session_size(plan):
        return None
    if stage is TaskKind.TRAIN:
        return 0, alive
    if len(alive) >= session_threshold(plan, len(names)):
        in_sum = stage in (TaskKind.CONSISTENCY_CHECK, TaskKind.UNMASK)
        return 0, set(names) if in_sum else alive
    return 1, alive


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_sites=st.integers(min_value=3, max_value=6),
    stage=st.sampled_from(STAGES),
    data=st.data(),
)
def test_any_dropout_pattern_completes_iff_enough_survive_every_stage(
    n_sites: int, stage: TaskKind, data: st.DataObject
) -> None:
    names = [f"site-{i}" for i in range(n_sites)]
    dropped = set(data.draw(st.lists(st.sampled_from(names), unique=True, max_size=n_sites - 1)))
    engine, sites, aggregates = _run(n_sites, rounds=1, drop={(stage, 1): dropped})
    _check_exact(sites, aggregates)
    expected = _expected_update(_plan(rounds=1), names, stage, dropped)
    progress = engine.progress()
    updates = [
        (attempt, set(survivors)) for p, _, attempt, survivors, _ in aggregates if p == "update"
    ]
    if expected is None:
        assert progress.status is RunStatus.FAILED, progress.message
        assert "failed" in progress.message and updates == []
    else:
        assert progress.status is RunStatus.COMPLETED, progress.message
        assert updates == [expected]
        metrics = [set(a[3]) for a in aggregates if a[0] == "metrics"]
        assert metrics == [set(names) - dropped]  # the silent sites never evaluate


def _answer(engine: RunEngine, site: str, now: float, **fields: object) -> list[Effect]:
    task = engine.task_for(site)
    assert task is not None
    return engine.on_result(site, SiteResult(task_id=task.task_id, kind=task.kind, **fields), now)


def test_a_replayed_result_is_refused_and_leaves_the_engine_unchanged() -> None:
    ids = (f"task-{i}" for i in itertools.count())
    engine, _ = RunEngine.start("run-1", _plan(1), ["site-0", "site-1"], 0.0, ids=lambda: next(ids))
    offer = engine.task_for("site-0")
    assert offer is not None
    answer = SiteResult(task_id=offer.task_id, kind=offer.kind)
    first = engine.on_result("site-0", answer, 1.0)
    assert not any(isinstance(e, DuplicateResult) for e in first)
    again = engine.on_result("site-0", answer, 1.0)  # identical re-push: idempotent
    assert again == [DuplicateResult("site-0", offer.task_id)]
    _answer(engine, "site-1", 1.0)
    assert engine.progress().phase is Phase.STATS
    _answer(engine, "site-0", 2.0)
    before = snapshot.dump(engine)[0]
    with pytest.raises(ResultRejected) as caught:
        engine.on_result("site-0", answer, 3.0)  # the old plan answer, replayed
    assert caught.value.code == "stale"
    assert snapshot.dump(engine)[0] == before


def test_late_and_mismatched_results_are_refused() -> None:
    engine, _ = RunEngine.start("run-1", _plan(1), ["site-0", "site-1"], 0.0)
    offer = engine.task_for("site-0")
    assert offer is not None
    with pytest.raises(ResultRejected, match="answers a plan_offer"):
        engine.on_result("site-0", SiteResult(task_id=offer.task_id, kind=TaskKind.TRAIN), 1.0)
    with pytest.raises(ResultRejected) as caught:
        engine.on_result("site-0", SiteResult(task_id=offer.task_id, kind=offer.kind), 1e9)
    assert caught.value.code == "late"


def test_too_few_acceptances_fails_with_the_refusal_reasons() -> None:
    engine, _ = RunEngine.start("run-1", _plan(1), ["site-0", "site-1"], 0.0)
    effects: list[Effect] = []
    for name in ("site-0", "site-1"):
        effects = _answer(
            engine,
            name,
            1.0,
            error_code="policy_refused",
            error_message=f"{name}: feature age not allowed",
        )
    progress = engine.progress()
    assert progress.status is RunStatus.FAILED
    assert "feature age not allowed" in progress.message
    assert progress.decision("site-0") == "refused"
    finished = [e for e in effects if isinstance(e, RunFinished)]
    assert finished == [RunFinished(RunStatus.FAILED, progress.message)]


def test_every_input_reports_its_effects() -> None:
    """start → tasks for every candidate; an answer that closes the offer → new tasks and a
    progress change; a tick that changes nothing → nothing."""
    engine, effects = RunEngine.start("run-1", _plan(1), ["site-0", "site-1"], 0.0)
    assert effects == [TasksChanged(("site-0", "site-1"))]
    effects = _answer(engine, "site-0", 1.0)
    assert effects == [TasksChanged(("site-0",))]  # its offer task was withdrawn
    effects = _answer(engine, "site-1", 1.0)
    assert effects[0] == TasksChanged(("site-0", "site-1"))  # both got FEDERATED_STATS
    (progress,) = [e.progress for e in effects if isinstance(e, ProgressChanged)]
    assert (progress.status, progress.phase, progress.step) == (
        RunStatus.RUNNING,
        Phase.STATS,
        StepPart.LOCAL,
    )
    assert progress.purpose is Purpose.STATS
    assert engine.tick(2.0) == []


def test_progress_shows_the_open_secagg_stage_and_who_is_alive() -> None:
    names = ["site-0", "site-1", "site-2"]
    engine, _ = RunEngine.start("run-1", _plan(1), names, 0.0)
    sites = {n: FakeSite(n, np.random.default_rng(i)) for i, n in enumerate(names)}
    for name in names:
        _answer(engine, name, 1.0)  # accept the plan
    assert engine.progress().secagg_stage is None
    for name in names[:2]:  # site-2 never sends its statistics
        task = engine.task_for(name)
        assert task is not None
        engine.on_result(name, sites[name].answer(task, engine), 2.0)
    assert engine.progress().sites_alive == tuple(names)  # still within the local deadline
    engine.tick(1000.0)
    progress = engine.progress()
    assert progress.step is StepPart.SECAGG and progress.secagg_stage is Stage.ADVERTISE_KEYS
    assert progress.sites_alive == ("site-0", "site-1")


def test_restore_mid_secagg_retries_with_a_fresh_session_and_completes() -> None:
    names = ["site-0", "site-1", "site-2"]
    engine, _ = RunEngine.start("run-1", _plan(1), names, 0.0)
    sites = {n: FakeSite(n, np.random.default_rng(i)) for i, n in enumerate(names)}
    clock = 1.0
    while not (
        engine.progress().phase is Phase.TRAIN and engine.progress().step is StepPart.SECAGG
    ):
        for name in names:
            task = engine.task_for(name)
            if task is not None:
                engine.on_result(name, sites[name].answer(task, engine), clock)
    attempt = engine.progress().attempt
    state, vectors = snapshot.dump(engine)
    restored, effects = snapshot.restore(state, vectors, clock)  # the old process died
    progress = restored.progress()
    assert progress.attempt == attempt + 1 and progress.step is StepPart.LOCAL
    assert "coordinator restarted" in progress.message
    assert any(isinstance(e, ProgressChanged) for e in effects)
    for _ in range(500):
        if restored.progress().phase in (Phase.FINISHING, Phase.DONE):
            break
        for name in names:
            task = restored.task_for(name)
            if task is not None:
                restored.on_result(name, sites[name].answer(task, restored), clock)
    assert restored.progress().status is RunStatus.COMPLETED, restored.progress().message


def test_a_snapshot_round_trips_exactly() -> None:
    engine, _, _ = _run(3, rounds=2, optimizer="fedadam")
    state, vectors = snapshot.dump(engine)
    loaded = snapshot.load(state, vectors)
    again_state, again_vectors = snapshot.dump(loaded)
    assert again_state == state
    assert again_vectors.keys() == vectors.keys() == {"global_vector", "adam_m", "adam_v"}
    for name, vector in vectors.items():
        np.testing.assert_array_equal(again_vectors[name], vector)
    assert state["optimizer_steps"] == 2


@pytest.mark.parametrize("optimizer", ["fedadam", "fedyogi"])
def test_a_restart_between_rounds_keeps_the_optimiser_state(optimizer: str) -> None:
    """Two runs with the same site data, one restored from its snapshot after round 1: the
    final models are bit-identical, so the moments went through the store unchanged."""
    names = ["site-0", "site-1", "site-2"]
    finals = []
    for restart in (False, True):
        engine, _ = RunEngine.start("run-1", _plan(2, optimizer=optimizer), names, 0.0)
        sites = {n: FakeSite(n, np.random.default_rng(i)) for i, n in enumerate(names)}
        restarted = False
        for _ in range(500):
            progress = engine.progress()
            if progress.phase in (Phase.FINISHING, Phase.DONE):
                break
            if restart and not restarted and progress.global_round == 1:
                engine = snapshot.load(*snapshot.dump(engine))
                restarted = True
            for name in names:
                task = engine.task_for(name)
                if task is not None:
                    engine.on_result(name, sites[name].answer(task, engine), 1.0)
        assert engine.progress().status is RunStatus.COMPLETED
        assert engine.global_vector is not None
        finals.append(engine.global_vector)
    np.testing.assert_array_equal(finals[0], finals[1])


def test_stop_ends_the_run_and_tells_the_sites() -> None:
    engine, _ = RunEngine.start("run-1", _plan(1), ["site-0", "site-1"], 0.0)
    effects = engine.stop("operator said so", 5.0)
    assert RunFinished(RunStatus.STOPPED, "operator said so") in effects
    assert engine.progress().status is RunStatus.STOPPED
    assert all(engine.task_for(s).kind is TaskKind.RUN_FINISHED for s in ("site-0", "site-1"))
    assert engine.stop("again", 6.0) == []


def test_a_site_awaiting_approval_keeps_its_offer_and_the_run_goes_on_without_it() -> None:
    plan = _plan(rounds=1)
    names = ["site-0", "site-1", "site-2"]
    ids = (f"task-{i}" for i in itertools.count())
    engine, _ = RunEngine.start("run-1", plan, names, 1000.0, ids=lambda: next(ids))
    offer = engine.task_for("site-2")
    assert offer is not None and offer.kind is TaskKind.PLAN_OFFER
    pending = SiteResult(
        task_id=offer.task_id,
        kind=TaskKind.PLAN_OFFER,
        error_code="approval_pending",
        error_message="awaiting approval at the site (plan 06dcf014aff3)",
    )
    engine.on_result("site-2", pending, 1001.0)
    assert engine.task_for("site-2") == offer  # still outstanding: it will answer again
    progress = engine.progress()
    assert progress.decision("site-2") == "pending"
    assert progress.awaiting == {"site-2": "awaiting approval at the site (plan 06dcf014aff3)"}
    restored, _ = snapshot.restore(*snapshot.dump(engine), 1002.0)  # survives a restart
    assert restored.progress().awaiting == progress.awaiting
    for name in ("site-0", "site-1"):
        task = engine.task_for(name)
        assert task is not None
        engine.on_result(name, SiteResult(task_id=task.task_id, kind=task.kind), 1003.0)
    assert engine.progress().phase is Phase.OFFER  # waits for the pending site until the deadline
    engine.tick(1000.0 + plan.secagg.offer_timeout_s + 1)
    after = engine.progress()
    assert after.phase is Phase.STATS and after.accepted == ("site-0", "site-1")
    assert engine.task_for("site-2") is None
