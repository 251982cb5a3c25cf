"""Protobuf translation (coordinator/convert.py): every task kind a site can pull, the results it
pushes, the run status operators watch, and the model card that travels with an export."""

from __future__ import annotations

import json

import numpy as np
import pytest

from coordinator import convert
from coordinator.effects import Phase, RunStatus
from coordinator.engine import RunEngine
from coordinator.messages import SiteResult
from coordinator.store_rows import RunRow, SiteRow
from federation.releases import Purpose
from federation.tasks import PURPOSE_TO_WIRE, TASK_KIND_TO_WIRE, SessionKey, TaskKind
from federation.vectors import decode_vector
from federation.wire.v1 import admin_pb2, federation_pb2
from secagg.config import SessionConfig, Stage
from tests.unit.coordinator.test_engine import FakeSite, _plan

pytestmark = pytest.mark.unit

NAMES = ["site-0", "site-1", "site-2"]


def certificate(site: str) -> str | None:
    """Stands in for the fingerprint of the certificate the site said Hello with."""
    return f"sha256 of {site}"


def _wire_tasks() -> tuple[RunEngine, dict[TaskKind, federation_pb2.Task]]:
    """One run to the end, converting the first task of every kind at the moment it is pulled
    (Train and Evaluate carry the vectors current *then*)."""
    engine, _ = RunEngine.start("run-1", _plan(rounds=1), NAMES, 0.0)
    sites = {n: FakeSite(n, np.random.default_rng(i)) for i, n in enumerate(NAMES)}
    seen: dict[TaskKind, federation_pb2.Task] = {}
    for _ in range(500):
        if engine.progress().phase is Phase.DONE:
            break
        for name in NAMES:
            task = engine.task_for(name)
            if task is None:
                continue
            if task.kind not in seen:
                seen[task.kind] = convert.task_to_wire(task, engine, certificate)
                if task.kind in (TaskKind.TRAIN, TaskKind.EVALUATE):
                    assert engine.global_vector is not None
                    vector = decode_vector(getattr(seen[task.kind], task.kind.value).global_vector)
                    np.testing.assert_array_equal(vector, engine.global_vector)
            engine.on_result(name, sites[name].answer(task, engine), 1.0)
    return engine, seen


@pytest.fixture(scope="module")
def run() -> tuple[RunEngine, dict[TaskKind, federation_pb2.Task]]:
    return _wire_tasks()


def test_every_task_kind_is_converted(
    run: tuple[RunEngine, dict[TaskKind, federation_pb2.Task]],
) -> None:
    _, seen = run
    assert set(seen) == set(TaskKind)
    for kind, message in seen.items():
        assert message.kind == TASK_KIND_TO_WIRE[kind]
        assert message.run_id == "run-1" and len(message.task_id) == 32
        assert message.deadline_unix_ms > 0


def test_plan_offer_and_statistics_tasks_pin_the_plan(
    run: tuple[RunEngine, dict[TaskKind, federation_pb2.Task]],
) -> None:
    engine, seen = run
    offer = seen[TaskKind.PLAN_OFFER]
    assert offer.WhichOneof("payload") == "plan_offer"
    assert offer.plan_offer.plan_json == engine.plan.canonical_json()
    assert offer.plan_offer.plan_sha256 == engine.plan.sha256()
    assert offer.deadline_unix_ms == 120_000  # started at t = 0 with the 120 s offer window
    stats = seen[TaskKind.FEDERATED_STATS]
    assert json.loads(stats.federated_stats.spec_json) == {"plan_sha256": engine.plan.sha256()}


def test_train_and_evaluate_carry_the_model_and_the_standardisation(
    run: tuple[RunEngine, dict[TaskKind, federation_pb2.Task]],
) -> None:
    engine, seen = run
    assert engine.stats is not None
    std = engine.stats.standardization
    train, evaluate = seen[TaskKind.TRAIN].train, seen[TaskKind.EVALUATE].evaluate
    for body in (train, evaluate):
        assert list(body.standardisation.features) == engine.plan.feature_schema.encoded_names()
        np.testing.assert_allclose(body.standardisation.mean, std.means)
        np.testing.assert_allclose(body.standardisation.scale, std.stds)
        assert body.global_vector.length == len(body.global_vector.float32_le) // 4 > 0
    np.testing.assert_allclose(evaluate.events, engine.stats.events)
    np.testing.assert_allclose(evaluate.at_risk, engine.stats.at_risk)
    assert train.global_vector.float32_le != evaluate.global_vector.float32_le  # trained


@pytest.mark.parametrize(
    "kind",
    [
        TaskKind.ADVERTISE_KEYS,
        TaskKind.SHARE_KEYS,
        TaskKind.MASKED_INPUT,
        TaskKind.CONSISTENCY_CHECK,
        TaskKind.UNMASK,
    ],
)
def test_secagg_tasks_name_their_session(
    run: tuple[RunEngine, dict[TaskKind, federation_pb2.Task]], kind: TaskKind
) -> None:
    _, seen = run
    message = seen[kind]
    assert message.WhichOneof("payload") == "secagg"
    # the first secagg session of a run is the statistics one, round 0, attempt 0
    assert message.secagg.session_id == SessionKey("run-1", Purpose.STATS, 0, 0).text
    assert message.secagg.purpose == PURPOSE_TO_WIRE[Purpose.STATS]
    if kind is TaskKind.ADVERTISE_KEYS:
        config = SessionConfig.from_bytes(message.secagg.session_config)
        assert config.participants == (1, 2, 3)
        # participants are named by certificate fingerprint; the certificates are not resent
        assert [
            (p.participant_id, p.site_id, p.certificate_sha256, p.certificate_pem)
            for p in message.secagg.participants
        ] == [(i + 1, site, f"sha256 of {site}", "") for i, site in enumerate(NAMES)]
        assert message.secagg.message == b""
    else:
        assert not message.secagg.session_config and not message.secagg.participants
        assert message.secagg.message  # the relayed stage message


def test_run_finished_says_how_the_run_ended(
    run: tuple[RunEngine, dict[TaskKind, federation_pb2.Task]],
) -> None:
    _, seen = run
    finished = seen[TaskKind.RUN_FINISHED].run_finished
    assert finished.state == federation_pb2.RUN_STATE_COMPLETED
    assert finished.message == "completed"


def test_results_from_the_wire() -> None:
    wire = federation_pb2.TaskResult(task_id="t1", kind=federation_pb2.TASK_KIND_TRAIN)
    assert convert.result_from_wire(wire, TaskKind.TRAIN) == SiteResult("t1", TaskKind.TRAIN)
    wire.error.code = federation_pb2.TASK_ERROR_BUDGET_EXHAUSTED
    wire.error.message = "x" * 2000
    wire.privacy.epsilon_spent_run = 1.5
    wire.privacy.epsilon_spent_lifetime = 4.0
    result = convert.result_from_wire(wire, TaskKind.TRAIN)
    assert result.error_code == "budget_exhausted" and len(result.error_message) == 500
    assert (result.epsilon_run, result.epsilon_lifetime) == (1.5, 4.0)
    names = {convert.error_code_from_wire(_error(code)) for code in convert.TASK_ERROR_FROM_WIRE}
    assert names == {
        "policy_refused",
        "budget_exhausted",
        "invalid_task",
        "data",
        "secagg_verification",
        "internal",
        "approval_pending",
        "no_holdout",
    }
    assert set(convert.TASK_ERROR_FROM_WIRE) == set(federation_pb2.TaskErrorCode.values()) - {0}
    with pytest.raises(ValueError, match="unknown task error code 99"):
        convert.error_code_from_wire(_error(99))


def _error(code: int) -> federation_pb2.TaskResult:
    result = federation_pb2.TaskResult(task_id="t")
    result.error.code = code
    return result


def test_every_engine_state_has_a_wire_value() -> None:
    assert set(convert.STATUS_TO_WIRE) == set(RunStatus)
    assert set(convert.PHASE_TO_WIRE) == set(Phase)
    assert set(convert.SECAGG_STAGE_TO_WIRE) == set(Stage)


def _rows(engine: RunEngine) -> tuple[RunRow, list[SiteRow]]:
    row = RunRow(engine.run_id, 10.0, 12.5, "running", "", {})
    sites = [SiteRow(site, "", "1.0", {}, 1.0, 100.0 + i) for i, site in enumerate(NAMES)]
    return row, sites


def test_run_status_while_offering_and_refused() -> None:
    engine, _ = RunEngine.start("run-1", _plan(rounds=3), NAMES, 0.0)
    first = engine.task_for("site-0")
    assert first is not None
    engine.on_result("site-0", SiteResult(first.task_id, first.kind), 1.0)
    refused = engine.task_for("site-1")
    assert refused is not None
    engine.on_result(
        "site-1",
        SiteResult(refused.task_id, refused.kind, error_code="policy_refused", error_message="no"),
        1.0,
    )
    status = convert.run_status(engine, *_rows(engine))
    assert status.state == federation_pb2.RUN_STATE_PENDING
    assert status.stage == admin_pb2.RUN_STAGE_PLAN_OFFER
    assert (status.round, status.total_rounds, status.attempt) == (0, 3, 0)
    assert (status.submitted_unix_ms, status.updated_unix_ms) == (10_000, 12_500)
    assert status.plan_name == "engine" and status.sites_alive == 1  # only site-2 is asked still
    by_site = {s.site_id: s for s in status.sites}
    assert by_site["site-0"].decision == admin_pb2.PLAN_DECISION_ACCEPTED
    assert by_site["site-1"].decision == admin_pb2.PLAN_DECISION_REFUSED
    assert by_site["site-1"].reason == "no"
    assert by_site["site-2"].decision == admin_pb2.PLAN_DECISION_PENDING
    assert by_site["site-2"].alive and not by_site["site-0"].alive
    assert by_site["site-2"].last_seen_unix_ms == 102_000


def test_run_status_of_a_finished_run(
    run: tuple[RunEngine, dict[TaskKind, federation_pb2.Task]],
) -> None:
    engine, _ = run
    status = convert.run_status(engine, None, [])
    assert status.state == federation_pb2.RUN_STATE_COMPLETED
    assert status.stage == admin_pb2.RUN_STAGE_DONE
    assert status.submitted_unix_ms == 0
    assert all(s.decision == admin_pb2.PLAN_DECISION_ACCEPTED for s in status.sites)
    assert status.metrics_round == 1
    metrics = {m.name: m.value for m in status.latest_metrics}
    figures = ("patients", "events", "observed", "expected", "ibs", "c_windowed", "oe_ratio")
    companions = ("", "_se", "_lo", "_hi", "_resolvable")  # federation/metric_intervals.py
    assert set(metrics) == {f + c for f in figures for c in companions}
    assert metrics["c_windowed"] == pytest.approx(200 / 260, abs=0.01)
    # the whole course is there too, for `fedctl status --output json`
    history = [(h.purpose, h.round, h.participants, list(h.survivors)) for h in status.history]
    assert history == [(p, r, 3, NAMES) for p, r in (("stats", 0), ("update", 1), ("metrics", 1))]
    assert {m.name: m.value for m in status.history[-1].metrics} == metrics
    assert [m.name for m in status.history[0].metrics] == ["patients"]  # the statistics count


def test_run_status_shows_the_open_secagg_stage() -> None:
    engine, _ = RunEngine.start("run-1", _plan(rounds=1), NAMES, 0.0)
    sites = {n: FakeSite(n, np.random.default_rng(i)) for i, n in enumerate(NAMES)}
    while engine.progress().secagg_stage is None:
        for name in NAMES:
            task = engine.task_for(name)
            if task is not None:
                engine.on_result(name, sites[name].answer(task, engine), 1.0)
    status = convert.run_status(engine, None, [])
    assert status.stage == admin_pb2.RUN_STAGE_SECAGG_ADVERTISE_KEYS
    assert status.sites_alive == 3


def test_model_card(run: tuple[RunEngine, dict[TaskKind, federation_pb2.Task]]) -> None:
    engine, _ = run
    card = convert.model_card(engine, 1)
    json.dumps(card)  # it travels as JSON
    assert card["run_id"] == "run-1" and card["round"] == 1
    assert card["plan_sha256"] == engine.plan.sha256()
    assert card["plan"] == engine.plan.model_dump(mode="json")
    assert card["status"] == "completed" and card["message"] == "completed"
    assert card["feature_names"] == engine.plan.feature_schema.encoded_names()
    assert engine.stats is not None
    assert card["standardization"] == engine.stats.standardization.model_dump()
    assert [(h["purpose"], h["round"]) for h in card["history"]] == [
        ("stats", 0),
        ("update", 1),
        ("metrics", 1),
    ]
    assert card["privacy"] == {}
    assert isinstance(card["code_version"], str) and card["code_version"]


def test_policy_round_trip() -> None:
    wire = federation_pb2.PolicySummary(
        allowed_features=["age", "sex"],
        max_epsilon_per_run=3.0,
        lifetime_epsilon_budget=10.0,
        lifetime_epsilon_spent=1.0,
        max_delta=1e-5,
        min_cohort_size=50,
        allowed_model_kinds=["linear"],
    )
    stored = convert.policy_from_wire(wire)
    json.dumps(stored)
    back = federation_pb2.PolicySummary()
    convert.policy_to_wire(stored, back)
    assert back == wire
    empty = federation_pb2.PolicySummary()
    convert.policy_to_wire({}, empty)
    assert empty == federation_pb2.PolicySummary()
