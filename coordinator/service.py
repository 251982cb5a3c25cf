"""gRPC services: the site-facing Federation service and the operator-facing Admin service.

The services translate between protobuf and the sans-I/O RunEngine, persist every engine change in
the store (with its audit entries) before answering, and wake long-polling sites when something
changes. All engine access happens on the event loop, one call at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import grpc
import numpy as np
from grpc import aio

from coordinator import __version__
from coordinator.auth import RosterWatcher, current_identity
from coordinator.engine import (
    PendingTask,
    ResultRejected,
    RunEngine,
    RunStatus,
    SiteResult,
    TaskKind,
)
from coordinator.store import CoordinatorStore
from coordinator.validation import SiteInputError, check_policy_summary, check_privacy_report
from federation.identity import Identity
from federation.plan import PlanError, parse_plan
from federation.releases import Purpose
from federation.tasks import SessionKey
from federation.wire.v1 import admin_pb2, admin_pb2_grpc, federation_pb2, federation_pb2_grpc
from secagg.config import Stage

log = logging.getLogger("concordia.coordinator")

MAX_POLL_WAIT_S = 25.0
TICK_INTERVAL_S = 0.5
ONLINE_WINDOW_S = 60.0

_PURPOSE_WIRE = {
    Purpose.STATS: federation_pb2.SECAGG_PURPOSE_FEDERATED_STATS,
    Purpose.UPDATE: federation_pb2.SECAGG_PURPOSE_MODEL_UPDATE,
    Purpose.METRICS: federation_pb2.SECAGG_PURPOSE_METRICS,
}
_STATUS_WIRE = {
    RunStatus.PENDING: federation_pb2.RUN_STATE_PENDING,
    RunStatus.RUNNING: federation_pb2.RUN_STATE_RUNNING,
    RunStatus.COMPLETED: federation_pb2.RUN_STATE_COMPLETED,
    RunStatus.FAILED: federation_pb2.RUN_STATE_FAILED,
    RunStatus.STOPPED: federation_pb2.RUN_STATE_STOPPED,
}
_STAGE_WIRE = {
    Stage.ADVERTISE_KEYS: admin_pb2.RUN_STAGE_SECAGG_ADVERTISE_KEYS,
    Stage.SHARE_KEYS: admin_pb2.RUN_STAGE_SECAGG_SHARE_KEYS,
    Stage.MASKED_INPUT: admin_pb2.RUN_STAGE_SECAGG_MASKED_INPUT,
    Stage.CONSISTENCY_CHECK: admin_pb2.RUN_STAGE_SECAGG_CONSISTENCY_CHECK,
    Stage.UNMASK: admin_pb2.RUN_STAGE_SECAGG_UNMASK,
    Stage.DONE: admin_pb2.RUN_STAGE_AGGREGATE,
    Stage.ABORTED: admin_pb2.RUN_STAGE_AGGREGATE,
}
_PHASE_WIRE = {
    "offer": admin_pb2.RUN_STAGE_PLAN_OFFER,
    "stats": admin_pb2.RUN_STAGE_FEDERATED_STATS,
    "train": admin_pb2.RUN_STAGE_TRAIN,
    "evaluate": admin_pb2.RUN_STAGE_EVALUATE,
    "finishing": admin_pb2.RUN_STAGE_DONE,
    "done": admin_pb2.RUN_STAGE_DONE,
}


def task_kind_to_wire(kind: TaskKind) -> int:
    return int(federation_pb2.TaskKind.Value("TASK_KIND_" + kind.value.upper()))


def task_kind_from_wire(value: int) -> TaskKind | None:
    name = federation_pb2.TaskKind.Name(value) if value in federation_pb2.TaskKind.values() else ""
    try:
        return TaskKind(name.removeprefix("TASK_KIND_").lower())
    except ValueError:
        return None


def vector_to_wire(vector: np.ndarray) -> federation_pb2.GlobalVector:
    data = np.ascontiguousarray(vector, dtype="<f4").tobytes()
    return federation_pb2.GlobalVector(
        float32_le=data, length=int(vector.size), sha256=hashlib.sha256(data).hexdigest()
    )


class Coordinator:
    """Owns the engines and the store; the servicers call into it."""

    def __init__(
        self,
        store: CoordinatorStore,
        coordinator_id: str = "coordinator",
        clock: Callable[[], float] = time.time,
        roster: RosterWatcher | None = None,
    ) -> None:
        self.store = store
        self.coordinator_id = coordinator_id
        self.clock = clock
        # The signed consortium roster (server.py always passes one): only its active sites are
        # run candidates, and Hello hands its signed bytes to every site.
        self.roster = roster
        self.engines: dict[str, RunEngine] = {}
        self._changed = asyncio.Event()
        self._saved: dict[str, str] = {}
        self._submitted_by: dict[str, str] = {}

    # ------------------------------------------------------------------ lifecycle
    def resume(self) -> list[str]:
        """Reload every unfinished run after a (possibly violent) restart."""
        resumed = []
        now = self.clock()
        for row in self.store.runs():
            if row.state.get("phase") == "done":
                continue
            engine = RunEngine.restore(row.state, self.store.run_vectors(row.run_id), now)
            self.engines[row.run_id] = engine
            self._submitted_by[row.run_id] = row.submitted_by
            self._persist(engine, [("coordinator", "run_resumed", {"run_id": row.run_id})])
            resumed.append(row.run_id)
        return resumed

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for_change(self, timeout: float) -> None:
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def _persist(self, engine: RunEngine, audit: list[tuple[str, str, dict[str, Any]]]) -> None:
        state, vectors = engine.snapshot()
        text = json.dumps(state, sort_keys=True)
        if not audit and self._saved.get(engine.run_id) == text:
            return
        aggregate = None
        if engine.completed_aggregate is not None:
            record, total = engine.completed_aggregate
            aggregate = (
                record.purpose.value,
                record.round,
                record.attempt,
                record.survivors,
                total,
            )
            audit = [
                *audit,
                ("coordinator", "aggregated", {"run_id": engine.run_id, **record.to_json()}),
            ]
            engine.completed_aggregate = None
        self.store.save_run(
            state,
            vectors,
            submitted_by=self._submitted_by.get(engine.run_id, ""),
            global_round=engine.global_round,
            audit=audit,
            aggregate=aggregate,
        )
        self._saved[engine.run_id] = text
        self.notify()

    def tick(self) -> None:
        now = self.clock()
        for engine in list(self.engines.values()):
            before = (engine.status, engine.phase, engine.round, engine.attempt, engine.step)
            engine.tick(now)
            after = (engine.status, engine.phase, engine.round, engine.attempt, engine.step)
            audit = []
            if before != after:
                audit.append(("coordinator", "run_progress", self._progress(engine)))
            self._persist(engine, audit)
            if engine.phase == "done":
                self.engines.pop(engine.run_id, None)

    async def tick_forever(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(TICK_INTERVAL_S)

    @staticmethod
    def _progress(engine: RunEngine) -> dict[str, Any]:
        return {
            "run_id": engine.run_id,
            "status": engine.status.value,
            "phase": engine.phase,
            "round": engine.round,
            "attempt": engine.attempt,
            "step": engine.step,
            "message": engine.message,
        }

    # ------------------------------------------------------------------ runs
    def submit(self, plan_text: str, fmt: Literal["toml", "json"], submitted_by: str) -> RunEngine:
        plan = parse_plan(plan_text, fmt)
        run_id = "run-" + secrets.token_hex(4)
        sites = [row.site_id for row in self.store.sites()]
        if self.roster is not None:
            active = self.roster.roster.active_site_names()
            sites = [site for site in sites if site in active]
        engine = RunEngine.start(run_id, plan, sites, self.clock())
        self.engines[run_id] = engine
        self._submitted_by[run_id] = submitted_by
        self._persist(
            engine,
            [
                (
                    submitted_by,
                    "run_submitted",
                    {"run_id": run_id, "plan_sha256": plan.sha256(), "candidates": sites},
                )
            ],
        )
        return engine

    def stop(self, run_id: str, reason: str, actor: str) -> RunEngine | None:
        engine = self.engines.get(run_id)
        if engine is None:
            return None
        engine.stop(reason or f"stopped by {actor}", self.clock())
        self._persist(engine, [(actor, "run_stopped", {"run_id": run_id, "reason": reason})])
        return engine

    def find_task(self, site: str) -> PendingTask | None:
        for engine in self.engines.values():
            task = engine.task_for(site)
            if task is not None:
                return task
        return None

    def engine_for_result(self, site: str, task_id: str) -> RunEngine | None:
        for engine in self.engines.values():
            task = engine.task_for(site)
            if (task is not None and task.task_id == task_id) or engine.answered.get(
                site
            ) == task_id:
                return engine
        return None

    def audit_denied(self, identity: Identity | None, method: str, reason: str) -> None:
        actor = identity.uri if identity is not None else "anonymous"
        self.store.audit.append(actor, "denied", {"method": method, "reason": reason})

    # ------------------------------------------------------------------ protobuf views
    def task_to_wire(self, task: PendingTask, engine: RunEngine) -> federation_pb2.Task:
        message = federation_pb2.Task(
            task_id=task.task_id,
            run_id=engine.run_id,
            round=task.round,
            attempt=task.attempt,
            kind=task_kind_to_wire(task.kind),  # type: ignore[arg-type]
            deadline_unix_ms=int(task.deadline * 1000) if task.deadline else 0,
        )
        kind = task.kind
        if kind is TaskKind.PLAN_OFFER:
            text = engine.plan.canonical_json()
            message.plan_offer.plan_json = text
            message.plan_offer.plan_sha256 = engine.plan.sha256()
        elif kind is TaskKind.FEDERATED_STATS:
            message.federated_stats.spec_json = json.dumps({"plan_sha256": engine.plan.sha256()})
        elif kind in (TaskKind.TRAIN, TaskKind.EVALUATE):
            body = message.train if kind is TaskKind.TRAIN else message.evaluate
            assert engine.global_vector is not None and engine.stats is not None
            body.global_vector.CopyFrom(vector_to_wire(engine.global_vector))
            std = engine.stats.standardization
            body.standardisation.features.extend(engine.plan.feature_schema.encoded_names())
            body.standardisation.mean.extend(std.means)
            body.standardisation.scale.extend(std.stds)
            if kind is TaskKind.EVALUATE:
                message.evaluate.events.extend(engine.stats.events.tolist())
                message.evaluate.at_risk.extend(engine.stats.at_risk.tolist())
        elif kind is TaskKind.RUN_FINISHED:
            message.run_finished.state = _STATUS_WIRE[engine.status]
            message.run_finished.message = engine.message
        else:
            assert task.purpose is not None
            message.secagg.session_id = SessionKey(
                engine.run_id, task.purpose, task.round, task.attempt
            ).text
            message.secagg.purpose = _PURPOSE_WIRE[task.purpose]
            message.secagg.message = task.secagg_message
            if task.session_config:
                message.secagg.session_config = task.session_config
                for ident, site in task.participants:
                    message.secagg.participants.add(
                        site_id=site,
                        participant_id=ident,
                        certificate_pem=self.store.certificate(site) or "",
                    )
        return message

    def run_status(self, engine: RunEngine) -> admin_pb2.RunStatus:
        row = self.store.run(engine.run_id)
        status = admin_pb2.RunStatus(
            run_id=engine.run_id,
            plan_name=engine.plan.name,
            state=_STATUS_WIRE[engine.status],
            round=engine.round,
            total_rounds=engine.plan.training.rounds,
            attempt=engine.attempt,
            message=engine.message,
            submitted_unix_ms=int((row.submitted if row else 0) * 1000),
            updated_unix_ms=int((row.updated if row else 0) * 1000),
        )
        session = engine._session
        if engine.step == "secagg" and session is not None and not engine.status.terminal:
            status.stage = _STAGE_WIRE[session.stage]
        else:
            status.stage = _PHASE_WIRE[engine.phase]
        alive = set(engine.sites_alive())
        status.sites_alive = len(alive)
        seen = {s.site_id: s.last_seen for s in self.store.sites()}
        for site in engine.candidates:
            if site in engine.accepted:
                decision = admin_pb2.PLAN_DECISION_ACCEPTED
            elif (site in engine.refusals and engine.phase != "offer") or site in engine.refusals:
                decision = admin_pb2.PLAN_DECISION_REFUSED
            else:
                decision = admin_pb2.PLAN_DECISION_PENDING
            status.sites.add(
                site_id=site,
                decision=decision,
                reason=engine.refusals.get(site, ""),
                alive=site in alive,
                epsilon_spent=engine.privacy.get(site, {}).get("epsilon_run", 0.0),
                last_seen_unix_ms=int(seen.get(site, 0.0) * 1000),
            )
        for record in reversed(engine.history):
            if record.purpose is Purpose.METRICS and record.metrics:
                status.metrics_round = record.round
                for name, value in sorted(record.metrics.items()):
                    status.latest_metrics.add(name=name, value=value)
                break
        return status

    def model_card(self, engine: RunEngine, round_: int) -> dict[str, Any]:
        return {
            "run_id": engine.run_id,
            "plan": engine.plan.model_dump(mode="json"),
            "plan_sha256": engine.plan.sha256(),
            "status": engine.status.value,
            "message": engine.message,
            "round": round_,
            "feature_names": engine.plan.feature_schema.encoded_names(),
            "standardization": None
            if engine.stats is None
            else engine.stats.standardization.model_dump(),
            "history": [r.to_json() for r in engine.history],
            "privacy": engine.privacy,
            "code_version": __version__,
        }

    def engine_or_stored(self, run_id: str) -> RunEngine | None:
        engine = self.engines.get(run_id)
        if engine is not None:
            return engine
        row = self.store.run(run_id)
        if row is None:
            return None
        return RunEngine.restore(row.state, self.store.run_vectors(run_id), self.clock())


def _wire_error_code(result: federation_pb2.TaskResult) -> str | None:
    if not result.HasField("error") or result.error.code == federation_pb2.TASK_ERROR_UNSPECIFIED:
        return None
    return (
        str(federation_pb2.TaskErrorCode.Name(result.error.code))
        .removeprefix("TASK_ERROR_")
        .lower()
    )


class FederationService(federation_pb2_grpc.FederationServicer):
    """Site → coordinator: Hello, PullTask (long-poll), PushResult."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator

    async def _site(self, request_site_id: str, context: aio.ServicerContext) -> str:
        identity = current_identity.get()
        if request_site_id and request_site_id != identity.name:
            reason = f"certificate is {identity.name}, request claims {request_site_id}"
            self.c.audit_denied(identity, "site_id_mismatch", reason)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
        return identity.name

    async def Hello(
        self, request: federation_pb2.HelloRequest, context: aio.ServicerContext
    ) -> federation_pb2.HelloResponse:
        site = await self._site(request.site_id, context)
        pem = ""
        certs = context.auth_context().get("x509_pem_cert") or []
        if certs:
            pem = certs[0].decode()
        try:
            check_policy_summary(request.policy)
        except SiteInputError as exc:
            self.c.store.audit.append(f"site:{site}", "hello_rejected", {"reason": exc.reason})
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.reason)
            raise AssertionError("unreachable") from None
        policy = {
            "allowed_features": list(request.policy.allowed_features),
            "max_epsilon_per_run": request.policy.max_epsilon_per_run,
            "lifetime_epsilon_budget": request.policy.lifetime_epsilon_budget,
            "lifetime_epsilon_spent": request.policy.lifetime_epsilon_spent,
            "max_delta": request.policy.max_delta,
            "min_cohort_size": request.policy.min_cohort_size,
            "allowed_model_kinds": list(request.policy.allowed_model_kinds),
        }
        self.c.store.record_hello(site, pem, request.agent_version[:64], policy)
        return federation_pb2.HelloResponse(
            coordinator_id=self.c.coordinator_id,
            server_time_unix_ms=int(self.c.clock() * 1000),
            poll_wait_ms=int(MAX_POLL_WAIT_S * 1000),
            roster=self.c.roster.signed if self.c.roster is not None else b"",
        )

    async def PullTask(
        self, request: federation_pb2.PullTaskRequest, context: aio.ServicerContext
    ) -> federation_pb2.Task:
        site = await self._site(request.site_id, context)
        self.c.store.touch_site(site)
        wait = min(request.wait_ms / 1000.0, MAX_POLL_WAIT_S)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait
        while True:
            task = self.c.find_task(site)
            if task is not None:
                engine = self.c.engine_for_result(site, task.task_id)
                assert engine is not None
                return self.c.task_to_wire(task, engine)
            remaining = give_up - loop.time()
            if remaining <= 0:
                return federation_pb2.Task(
                    task_id="", kind=federation_pb2.TASK_KIND_IDLE, retry_after_ms=0
                )
            await self.c.wait_for_change(remaining)

    async def PushResult(
        self, request: federation_pb2.TaskResult, context: aio.ServicerContext
    ) -> federation_pb2.PushAck:
        site = await self._site("", context)
        self.c.store.touch_site(site)
        kind = task_kind_from_wire(request.kind)
        engine = self.c.engine_for_result(site, request.task_id)
        if engine is None or kind is None:
            reason = f"result for task {request.task_id[:12]!r} answers no outstanding task"
            self.c.store.audit.append(
                f"site:{site}", "result_rejected", {"task_id": request.task_id, "reason": reason}
            )
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, reason)
            raise AssertionError("unreachable")
        privacy = request.privacy if request.HasField("privacy") else None
        if privacy is not None:
            try:
                check_privacy_report(privacy)
            except SiteInputError as exc:  # before the engine sees it: its state is unchanged
                self.c.store.audit.append(
                    f"site:{site}",
                    "result_rejected",
                    {"run_id": engine.run_id, "task_id": request.task_id, "reason": exc.reason},
                )
                log.warning("result from %s rejected: %s", site, exc.reason)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.reason)
                raise AssertionError("unreachable") from None
        _crash_if_asked(engine, kind)
        result = SiteResult(
            task_id=request.task_id,
            kind=kind,
            payload=request.payload,
            error_code=_wire_error_code(request),
            error_message=request.error.message[:500] if request.HasField("error") else "",
            epsilon_run=privacy.epsilon_spent_run if privacy else None,
            epsilon_lifetime=privacy.epsilon_spent_lifetime if privacy else None,
        )
        task_round = engine.round  # the answered task's round (the result may advance the engine)
        try:
            duplicate = engine.on_result(site, result, self.c.clock())
        except ResultRejected as exc:
            self.c.store.audit.append(
                f"site:{site}",
                "result_rejected",
                {"run_id": engine.run_id, "task_id": request.task_id, "reason": exc.reason},
            )
            code = (
                grpc.StatusCode.INVALID_ARGUMENT
                if exc.code == "invalid"
                else grpc.StatusCode.FAILED_PRECONDITION
            )
            await context.abort(code, exc.reason)
            raise AssertionError("unreachable") from None
        audit: list[tuple[str, str, dict[str, Any]]] = []
        if not duplicate:
            detail: dict[str, Any] = {
                "run_id": engine.run_id,
                "kind": kind.value,
                "round": task_round,
                "bytes": len(request.payload),
            }
            if result.error_code:
                detail["error"] = result.error_code
                detail["message"] = result.error_message
            if result.epsilon_run is not None:
                detail["epsilon_run"] = result.epsilon_run
            audit.append((f"site:{site}", "result", detail))
        self.c._persist(engine, audit)
        return federation_pb2.PushAck(task_id=request.task_id, duplicate=duplicate)


CRASH_ENV = "CONCORDIA_TEST_CRASH_AT"


def _crash_if_asked(engine: RunEngine, kind: TaskKind) -> None:
    """Fault injection for the end-to-end tests: SIGKILL the coordinator on receiving a result.

    CONCORDIA_TEST_CRASH_AT="kind:purpose:round,…" as for the site agent. Unset: does nothing.
    """
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    purpose = engine._purpose().value if engine.phase in ("stats", "train", "evaluate") else "-"
    for item in spec.split(","):
        want_kind, want_purpose, want_round = item.strip().split(":")
        if (
            want_kind == kind.value
            and want_purpose in ("*", purpose)
            and int(want_round) == engine.round
        ):
            os.kill(os.getpid(), signal.SIGKILL)


class AdminService(admin_pb2_grpc.AdminServicer):
    """Operator → coordinator."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator

    async def SubmitRun(
        self, request: admin_pb2.SubmitRunRequest, context: aio.ServicerContext
    ) -> admin_pb2.SubmitRunResponse:
        identity = current_identity.get()
        fmt: Literal["toml", "json"] = (
            "json" if request.format == admin_pb2.PLAN_FORMAT_JSON else "toml"
        )
        if len(request.plan_text) > 1_000_000:
            return admin_pb2.SubmitRunResponse(
                errors=[admin_pb2.FieldError(field="plan", message="plan text exceeds 1 MB")]
            )
        try:
            if request.validate_only:
                plan = parse_plan(request.plan_text, fmt)
                return admin_pb2.SubmitRunResponse(plan_sha256=plan.sha256())
            engine = self.c.submit(request.plan_text, fmt, identity.uri)
        except PlanError as exc:
            errors = [
                admin_pb2.FieldError(field=part.split(":", 1)[0].strip(), message=part.strip())
                for part in str(exc).removeprefix("invalid plan: ").split("; ")
            ]
            self.c.store.audit.append(identity.uri, "run_refused", {"reason": str(exc)[:500]})
            return admin_pb2.SubmitRunResponse(errors=errors)
        return admin_pb2.SubmitRunResponse(run_id=engine.run_id, plan_sha256=engine.plan.sha256())

    async def ListRuns(
        self, request: admin_pb2.ListRunsRequest, context: aio.ServicerContext
    ) -> admin_pb2.ListRunsResponse:
        response = admin_pb2.ListRunsResponse()
        for row in self.c.store.runs(limit=request.limit):
            engine = self.c.engine_or_stored(row.run_id)
            if engine is not None:
                response.runs.append(self.c.run_status(engine))
        return response

    async def _engine(self, run_id: str, context: aio.ServicerContext) -> RunEngine:
        engine = self.c.engine_or_stored(run_id)
        if engine is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no run {run_id!r}")
            raise AssertionError("unreachable")
        return engine

    async def GetRun(
        self, request: admin_pb2.GetRunRequest, context: aio.ServicerContext
    ) -> admin_pb2.RunStatus:
        return self.c.run_status(await self._engine(request.run_id, context))

    async def WatchRun(
        self, request: admin_pb2.WatchRunRequest, context: aio.ServicerContext
    ) -> AsyncIterator[admin_pb2.RunStatus]:
        engine = await self._engine(request.run_id, context)
        last = b""
        while True:
            engine = self.c.engines.get(request.run_id, engine)
            status = self.c.run_status(engine)
            encoded = status.SerializeToString()
            if encoded != last:
                yield status
                last = encoded
            if engine.status.terminal:
                return
            await self.c.wait_for_change(5.0)

    async def StopRun(
        self, request: admin_pb2.StopRunRequest, context: aio.ServicerContext
    ) -> admin_pb2.RunStatus:
        identity = current_identity.get()
        engine = self.c.stop(request.run_id, request.reason, identity.uri)
        if engine is None:
            engine = await self._engine(request.run_id, context)
        return self.c.run_status(engine)

    async def ListSites(
        self, request: admin_pb2.ListSitesRequest, context: aio.ServicerContext
    ) -> admin_pb2.ListSitesResponse:
        now = self.c.clock()
        response = admin_pb2.ListSitesResponse()
        for row in self.c.store.sites():
            state = (
                admin_pb2.SITE_STATE_ONLINE
                if now - row.last_seen <= ONLINE_WINDOW_S
                else admin_pb2.SITE_STATE_OFFLINE
            )
            info = response.sites.add(
                site_id=row.site_id,
                state=state,
                last_seen_unix_ms=int(row.last_seen * 1000),
                agent_version=row.agent_version,
            )
            policy = row.policy
            info.policy.allowed_features.extend(policy.get("allowed_features", []))
            info.policy.max_epsilon_per_run = float(policy.get("max_epsilon_per_run", 0.0))
            info.policy.lifetime_epsilon_budget = float(policy.get("lifetime_epsilon_budget", 0.0))
            info.policy.lifetime_epsilon_spent = float(policy.get("lifetime_epsilon_spent", 0.0))
            info.policy.max_delta = float(policy.get("max_delta", 0.0))
            info.policy.min_cohort_size = int(policy.get("min_cohort_size", 0))
            info.policy.allowed_model_kinds.extend(policy.get("allowed_model_kinds", []))
            for engine in self.c.engines.values():
                if row.site_id in engine.candidates:
                    info.run_id = engine.run_id
                    if row.site_id in engine.accepted:
                        info.decision = admin_pb2.PLAN_DECISION_ACCEPTED
                    elif row.site_id in engine.refusals:
                        info.decision = admin_pb2.PLAN_DECISION_REFUSED
                        info.reason = engine.refusals[row.site_id]
                    else:
                        info.decision = admin_pb2.PLAN_DECISION_PENDING
        return response

    async def GetAudit(
        self, request: admin_pb2.GetAuditRequest, context: aio.ServicerContext
    ) -> admin_pb2.GetAuditResponse:
        limit = min(request.limit or 100, 1000)
        entries = self.c.store.audit.entries(after=request.after_seq, limit=limit)
        head_seq, head_hash = self.c.store.audit.head()
        response = admin_pb2.GetAuditResponse(head_seq=head_seq, head_hash=head_hash)
        for e in entries:
            response.entries.add(
                seq=e.seq,
                ts=e.ts,
                actor=e.actor,
                action=e.action,
                detail_json=json.dumps(e.detail, sort_keys=True),
                prev_hash=e.prev_hash,
                hash=e.hash,
            )
        return response

    async def VerifyAudit(
        self, request: admin_pb2.VerifyAuditRequest, context: aio.ServicerContext
    ) -> admin_pb2.VerifyAuditResponse:
        result = self.c.store.audit.verify()
        return admin_pb2.VerifyAuditResponse(
            ok=result.ok,
            checked=result.checked,
            head_seq=result.head_seq,
            head_hash=result.head_hash,
            problem=result.problem or "",
        )

    async def ExportRun(
        self, request: admin_pb2.ExportRunRequest, context: aio.ServicerContext
    ) -> admin_pb2.ExportRunResponse:
        engine = await self._engine(request.run_id, context)
        found = self.c.store.round_vector(request.run_id, request.round or None)
        if found is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"run {request.run_id} has no global model yet"
            )
            raise AssertionError("unreachable")
        round_, vector = found
        card = self.c.model_card(engine, round_)
        return admin_pb2.ExportRunResponse(
            run_id=engine.run_id,
            round=round_,
            global_vector=vector_to_wire(vector),
            model_card_json=json.dumps(card, sort_keys=True),
        )
