"""Site-published evaluation figures at the coordinator: checked before the engine takes them
(a malformed one is dropped with a named cause and audited; the result and the run go on), kept
in the final evaluation's record beside the consortium's figures (never part of the sum: those
are the same with or without them), and kept across a restart and in the exported card.

The sites are test_engine's simulated sites (real secagg clients); the results go through the
real Federation servicer in-process, as a site's PushResult would."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator import convert
from coordinator.app import Coordinator
from coordinator.effects import Phase, RunStatus
from coordinator.engine import RunEngine
from coordinator.federation_service import FederationService
from coordinator.messages import PendingTask
from coordinator.store import CoordinatorStore
from coordinator.validation import SiteInputError, check_published_metrics
from federation.identity import Identity
from federation.releases import MetricsLayout
from federation.site_metrics import MAX_WEIGHTED, SITE_PREFIX, published_from_wire
from federation.tasks import TaskKind
from federation.wire.v1 import federation_pb2 as pb
from tests.unit.coordinator.test_engine import PLAN, FakeSite
from tests.unit.coordinator.test_operator_views import FakeContext, _call

pytestmark = pytest.mark.unit

NAMES = ["site-0", "site-1", "site-2"]
LAYOUT = MetricsLayout()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _published(sigma: float = 2.0) -> pb.PublishedMetrics:
    """A plausible published release: a few hundred patients, C ≈ 0.7."""
    raw = np.zeros(LAYOUT.length)
    raw[:5] = [300.0, 90.0, 40.0, 630.0, 900.0]
    return pb.PublishedMetrics(weighted=list(LAYOUT.encode(raw)), noise_multiplier=sigma)


def _evaluate_result(task: PendingTask, published: pb.PublishedMetrics | None) -> pb.TaskResult:
    result = pb.TaskResult(task_id=task.task_id, kind=pb.TASK_KIND_EVALUATE)
    if published is not None:
        result.published_metrics.CopyFrom(published)
    return result


# ---------------------------------------------------------------------- the check


def test_a_sane_published_release_passes_and_decodes_with_its_own_sigma() -> None:
    sent = _published(sigma=2.5)
    check_published_metrics(_evaluate_result(_task(), sent), TaskKind.EVALUATE)
    figures = published_from_wire(sent.weighted, sent.noise_multiplier).figures()
    assert figures["patients"] == pytest.approx(300.0)
    assert figures["c_windowed"] == pytest.approx(0.7)
    assert figures["noise_multiplier"] == 2.5
    # its interval is its own noise (n = 1, σ·s), not the consortium's: wider with a larger σ
    wider = published_from_wire(sent.weighted, 10.0).figures()
    assert wider["c_windowed_se"] > figures["c_windowed_se"] > 0


def _task(kind: TaskKind = TaskKind.EVALUATE) -> PendingTask:
    return PendingTask("t-1", "site-0", kind, 3, 0, None)


def _malformed() -> list[tuple[pb.PublishedMetrics, str]]:
    """Each malformed release with the words its refusal must contain."""
    good = list(_published().weighted)
    n = LAYOUT.length
    with_value = lambda i, v: [*good[:i], v, *good[i + 1 :]]  # noqa: E731
    return [
        (pb.PublishedMetrics(weighted=good[:-1], noise_multiplier=2.0), f"has {n - 1} values"),
        (pb.PublishedMetrics(weighted=[*good, 1.0], noise_multiplier=2.0), f"expected {n}"),
        (pb.PublishedMetrics(weighted=[], noise_multiplier=2.0), "has 0 values"),
        (pb.PublishedMetrics(weighted=with_value(0, math.nan), noise_multiplier=2.0), "[0]"),
        (pb.PublishedMetrics(weighted=with_value(2, math.inf), noise_multiplier=2.0), "[2]"),
        (pb.PublishedMetrics(weighted=with_value(4, -1e300), noise_multiplier=2.0), "[4]"),
        (pb.PublishedMetrics(weighted=good, noise_multiplier=0.0), "noise_multiplier"),
        (pb.PublishedMetrics(weighted=good, noise_multiplier=-1.0), "noise_multiplier"),
        (pb.PublishedMetrics(weighted=good, noise_multiplier=math.nan), "noise_multiplier"),
        (pb.PublishedMetrics(weighted=good, noise_multiplier=math.inf), "noise_multiplier"),
    ]


@pytest.mark.parametrize("index", range(10))
def test_a_malformed_published_release_is_refused_naming_the_field(index: int) -> None:
    sent, named = _malformed()[index]
    with pytest.raises(SiteInputError) as caught:
        check_published_metrics(_evaluate_result(_task(), sent), TaskKind.EVALUATE)
    reason = caught.value.reason
    assert reason.startswith("published_metrics.") and "\n" not in reason
    assert named in reason, reason


def test_published_figures_are_taken_only_on_a_successful_evaluation_result() -> None:
    offer = pb.TaskResult(task_id="t", kind=pb.TASK_KIND_PLAN_OFFER)
    offer.published_metrics.CopyFrom(_published())
    with pytest.raises(SiteInputError, match="only on a successful evaluation result"):
        check_published_metrics(offer, TaskKind.PLAN_OFFER)
    failed = _evaluate_result(_task(), _published())
    failed.error.code = pb.TASK_ERROR_DATA
    with pytest.raises(SiteInputError, match="with an error"):
        check_published_metrics(failed, TaskKind.EVALUATE)


# ---------------------------------------------------------------------- a run


def _app(path: Path, clock: Clock) -> Coordinator:
    store = CoordinatorStore(path, clock=clock)
    for site in NAMES:
        store.record_hello(site, f"PEM {site}", "1.0", {})
    return Coordinator(store, clock=clock)


def _run(
    tmp_path: Path, published: dict[str, pb.PublishedMetrics], restart_in_evaluation: bool = False
) -> tuple[Coordinator, RunEngine]:
    """One run of 2 rounds; at the evaluation each site pushes its wire result through the
    Federation servicer, with the published figures given for it."""
    clock = Clock()
    path = tmp_path / "c.sqlite"
    app = _app(path, clock)
    engine = app.submit(PLAN.format(rounds=2, attempts=3), "toml", "urn:op")
    run_id = engine.run_id
    sites = {n: FakeSite(n, np.random.default_rng(i)) for i, n in enumerate(NAMES)}
    service = FederationService(app)
    restarted = False
    for _ in range(1000):
        engine = app.engines.get(run_id) or engine
        if engine.progress().phase in (Phase.FINISHING, Phase.DONE):
            break
        for name in NAMES:
            found = app.find_task(name)
            if found is None:
                continue
            live, task = found
            answer = sites[name].answer(task, live)  # keeps its release for the session
            if task.kind is TaskKind.EVALUATE:
                wire = _evaluate_result(task, published.get(name))
                _call(Identity("site", name), service.PushResult(wire, FakeContext()))
                if restart_in_evaluation and not restarted and name == NAMES[0]:
                    # the coordinator dies after taking one evaluation result: a new process
                    # on the same store must still hold that site's published figures
                    app = _app(path, clock)
                    app.resume()
                    service, restarted = FederationService(app), True
                    break
                continue
            app.take_result(live, name, answer, len(answer.payload))
    final = app.engine_or_stored(run_id)
    assert final is not None and final.progress().status is RunStatus.COMPLETED
    return app, final


def _final_metrics(engine: RunEngine) -> dict[str, float]:
    record = engine.progress().latest_metrics()
    assert record is not None and record.round == 2
    return dict(record.metrics)


def test_published_figures_are_kept_beside_the_sum_and_never_in_it(tmp_path: Path) -> None:
    _, plain = _run(tmp_path / "plain", {})
    app, engine = _run(
        tmp_path / "published",
        {"site-0": _published(2.0), "site-2": _published(8.0), "site-1": _malformed()[3][0]},
    )
    consortium = {k: v for k, v in _final_metrics(plain).items()}
    metrics = _final_metrics(engine)
    assert not any(k.startswith(SITE_PREFIX) for k in consortium)
    # the sum's figures are exactly those of the run without any published figure
    assert {k: v for k, v in metrics.items() if not k.startswith(SITE_PREFIX)} == consortium
    assert metrics["site:site-0:c_windowed"] == pytest.approx(0.7)
    assert metrics["site:site-0:noise_multiplier"] == 2.0
    assert metrics["site:site-2:noise_multiplier"] == 8.0
    assert metrics["site:site-2:c_windowed_se"] > metrics["site:site-0:c_windowed_se"]
    # the malformed one: not taken, flagged for the card, audited with its cause; the site's
    # evaluation itself was taken (it is in the sum)
    assert metrics["site:site-1:published_refused"] == 1.0
    assert not any(k.startswith("site:site-1:") and "c_windowed" in k for k in metrics)
    refused = [
        (e.actor, e.detail)
        for e in app.store.audit.entries(after=0, limit=10_000)
        if e.action == "published_metrics_refused"
    ]
    assert refused == [
        (
            "site:site-1",
            {
                "run_id": engine.run_id,
                "reason": "published_metrics.weighted[0] must be finite and within"
                f" ±{MAX_WEIGHTED:g}, got nan",
            },
        )
    ]
    record = engine.progress().latest_metrics()
    assert record is not None and "site-1" in record.survivors
    # the exported card carries them (the JSON a report is built from)
    card = json.loads(json.dumps(convert.model_card(engine, 2)))
    last = [r for r in card["history"] if r["purpose"] == "metrics"][-1]
    assert last["metrics"]["site:site-0:patients"] == pytest.approx(300.0)


def test_published_figures_survive_a_restart_during_the_evaluation(tmp_path: Path) -> None:
    _, engine = _run(tmp_path, {"site-0": _published(2.0)}, restart_in_evaluation=True)
    metrics = _final_metrics(engine)
    assert metrics["site:site-0:c_windowed"] == pytest.approx(0.7)


def test_the_engine_snapshot_keeps_the_steps_published_figures() -> None:
    from coordinator import snapshot

    engine, _ = RunEngine.start("run-x", _plan(), NAMES, 1000.0)
    engine.published = {"site-0": {"c_windowed": 0.7, "noise_multiplier": 2.0}}
    state, vectors = snapshot.dump(engine)
    restored = snapshot.load(json.loads(json.dumps(state)), vectors)
    assert restored.published == engine.published
    older: dict[str, Any] = {k: v for k, v in state.items() if k != "published"}
    assert snapshot.load(older, vectors).published == {}  # a store of an older coordinator


def _plan() -> Any:
    from federation.plan import parse_plan

    return parse_plan(PLAN.format(rounds=2, attempts=3))
