"""The operator-facing gRPC service (`fedctl`): submit, watch, stop and export runs, read sites
and the audit log. Who may call which method is `coordinator/auth.py`'s table, checked before
any handler here runs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Literal

import grpc
from grpc import aio

from coordinator import convert
from coordinator.app import Coordinator
from coordinator.auth import current_identity
from coordinator.engine import RunEngine
from coordinator.federation_service import MAX_POLL_WAIT_S
from coordinator.overlaps import ConcurrentRunError
from federation.plan import PlanError
from federation.vectors import encode_vector
from federation.wire.v1 import admin_pb2, admin_pb2_grpc

ONLINE_WINDOW_S = 2 * MAX_POLL_WAIT_S
"""A site is ONLINE while its last RPC (Hello, PullTask, PushResult or PushAndPull) is younger
than this.

A live agent opens a long-poll (PullTask, or PushAndPull with its answer) as soon as the previous
one returns, and the coordinator holds one at most MAX_POLL_WAIT_S (25 s), so a healthy site is
never silent for longer than one long-poll plus the time it takes to answer a task; twice the
long-poll wait (50 s) tolerates one poll lost to a network blip, while a dead agent shows OFFLINE
at most 50 s after its last call."""
MAX_PLAN_BYTES = 1_000_000


class AdminService(admin_pb2_grpc.AdminServicer):
    """Operator → coordinator. Reads go to the store or a live engine's progress; the only
    writes (SubmitRun, StopRun) go through the application object, which audits them."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator

    async def SubmitRun(
        self, request: admin_pb2.SubmitRunRequest, context: aio.ServicerContext
    ) -> admin_pb2.SubmitRunResponse:
        """Validate a plan and start it (or only validate it); errors name the plan's fields,
        so an operator can fix them without reading a traceback.

        A plan whose candidate sites are candidates of a live run is refused unless
        `allow_concurrent` is set: one `candidates` error per shared site, naming its live runs
        and the combined ε it could spend, then an `allow_concurrent` error saying how to go
        ahead. A validate-only request gets the same errors (not a warning): it answers what
        the submission would get, so a dry run that passes means the real one starts. Every
        refusal, validate-only or not, is audited as `run_refused`.

        `dry_run` starts a run that only asks each site whether it would accept the plan (see
        `RunEngine`); the overlap check does not apply to it, as it charges nothing."""
        identity = current_identity.get()
        fmt: Literal["toml", "json"] = (
            "json" if request.format == admin_pb2.PLAN_FORMAT_JSON else "toml"
        )
        if len(request.plan_text) > MAX_PLAN_BYTES:
            return admin_pb2.SubmitRunResponse(
                errors=[admin_pb2.FieldError(field="plan", message="plan text exceeds 1 MB")]
            )
        try:
            if request.validate_only:
                plan, _, _ = self.c.check_submission(
                    request.plan_text,
                    fmt,
                    allow_concurrent=request.allow_concurrent or request.dry_run,
                )
                return admin_pb2.SubmitRunResponse(plan_sha256=plan.sha256())
            engine = self.c.submit(
                request.plan_text,
                fmt,
                identity.uri,
                allow_concurrent=request.allow_concurrent,
                dry_run=request.dry_run,
            )
        except PlanError as exc:
            errors = [
                admin_pb2.FieldError(field=part.split(":", 1)[0].strip(), message=part.strip())
                for part in exc.problems
            ]
            self.c.store.audit.append(identity.uri, "run_refused", {"reason": str(exc)[:500]})
            return admin_pb2.SubmitRunResponse(errors=errors)
        except ConcurrentRunError as exc:
            errors = [
                admin_pb2.FieldError(field="candidates", message=overlap.message())
                for overlap in exc.overlaps
            ]
            errors.append(admin_pb2.FieldError(field="allow_concurrent", message=exc.HINT))
            detail = {
                "reason": "candidates overlap live runs",
                "validate_only": request.validate_only,
                "overlaps": [overlap.to_json() for overlap in exc.overlaps],
            }
            self.c.store.audit.append(identity.uri, "run_refused", detail)
            return admin_pb2.SubmitRunResponse(errors=errors)
        return admin_pb2.SubmitRunResponse(run_id=engine.run_id, plan_sha256=engine.plan.sha256())

    def _status(self, engine: RunEngine) -> admin_pb2.RunStatus:
        row = self.c.store.run(engine.run_id, state=False)  # its times: the engine has the rest
        return convert.run_status(engine, row, self.c.store.sites())

    async def ListRuns(
        self, request: admin_pb2.ListRunsRequest, context: aio.ServicerContext
    ) -> admin_pb2.ListRunsResponse:
        """The newest runs first, live or finished; a finished run is rebuilt from the store,
        so an operator sees the same status before and after a coordinator restart."""
        response = admin_pb2.ListRunsResponse()
        for row in self.c.store.runs(limit=request.limit, state=False):
            engine = self.c.engine_or_stored(row.run_id)
            if engine is not None:
                response.runs.append(self._status(engine))
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
        """One run's status (what `fedctl status RUN` prints), from the live engine when there
        is one: only it knows the open secure-aggregation stage."""
        return self._status(await self._engine(request.run_id, context))

    async def WatchRun(
        self, request: admin_pb2.WatchRunRequest, context: aio.ServicerContext
    ) -> AsyncIterator[admin_pb2.RunStatus]:
        """The status now, then each time it differs, until the run ends: `fedctl watch`
        without polling."""
        engine = await self._engine(request.run_id, context)
        last = b""
        while True:
            engine = self.c.engines.get(request.run_id, engine)
            status = self._status(engine)
            encoded = status.SerializeToString()
            if encoded != last:
                yield status
                last = encoded
            if engine.progress().status.terminal:
                return
            await self.c.wait_for_change(5.0)

    async def StopRun(
        self, request: admin_pb2.StopRunRequest, context: aio.ServicerContext
    ) -> admin_pb2.RunStatus:
        """Stop a live run; a finished one is returned as it is (stopping is idempotent)."""
        identity = current_identity.get()
        engine = self.c.stop(request.run_id, request.reason, identity.uri)
        if engine is None:
            engine = await self._engine(request.run_id, context)
        return self._status(engine)

    async def ListSites(
        self, request: admin_pb2.ListSitesRequest, context: aio.ServicerContext
    ) -> admin_pb2.ListSitesResponse:
        """Every site that ever said Hello: online or not (its last RPC younger than
        ONLINE_WINDOW_S, and how long ago that was), its policy with the lifetime ε of its
        latest result, and its answer to (and ε spent in) the live run it is a candidate of, so
        an operator sees who is holding a run up."""
        now = self.c.clock()
        response = admin_pb2.ListSitesResponse(online_timeout_s=ONLINE_WINDOW_S)
        live = [engine.progress() for engine in self.c.engines.values()]
        for row in self.c.store.sites():
            age = max(0.0, now - row.last_seen)
            state = (
                admin_pb2.SITE_STATE_ONLINE
                if age < ONLINE_WINDOW_S
                else admin_pb2.SITE_STATE_OFFLINE
            )
            info = response.sites.add(
                site_id=row.site_id,
                state=state,
                last_seen_unix_ms=int(row.last_seen * 1000),
                last_seen_age_s=age,
                agent_version=row.agent_version,
            )
            convert.policy_to_wire(row.policy, info.policy)
            for progress in live:
                if row.site_id in progress.candidates:
                    convert.site_decision(progress, row.site_id, info)
        return response

    async def GetAudit(
        self, request: admin_pb2.GetAuditRequest, context: aio.ServicerContext
    ) -> admin_pb2.GetAuditResponse:
        """A page of the hash-chained audit log and its head, for `fedctl audit`: paged, so a
        long-lived coordinator's log never has to fit in one message."""
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
        """Check the whole chain here, where the log lives, instead of shipping it out."""
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
        """A run's global vector after a round (the latest by default) and its model card: the
        vector alone is unusable without the card's features and standardisation."""
        engine = await self._engine(request.run_id, context)
        found = self.c.store.round_vector(request.run_id, request.round or None)
        if found is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"run {request.run_id} has no global model yet"
            )
            raise AssertionError("unreachable")
        round_, vector = found
        card = convert.model_card(engine, round_)
        return admin_pb2.ExportRunResponse(
            run_id=engine.run_id,
            round=round_,
            global_vector=encode_vector(vector),
            model_card_json=json.dumps(card, sort_keys=True),
        )
