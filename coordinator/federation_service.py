"""The site-facing gRPC service: Hello, PullTask (long-poll), PushResult, PushAndPull (both).

Hospitals accept no inbound connections, so everything a site does starts here. The caller is
the peer certificate's site (`current_identity`, set by the authorisation interceptor), never a
message field; a field that claims another site is refused and audited.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc import aio

from coordinator import convert
from coordinator.app import Coordinator
from coordinator.auth import current_identity
from coordinator.certificates import CertificateRequestError
from coordinator.messages import ResultRejected
from coordinator.validation import (
    SiteInputError,
    check_policy_summary,
    check_privacy_report,
    check_published_metrics,
)
from federation.tasks import task_kind_from_wire
from federation.wire.v1 import federation_pb2, federation_pb2_grpc

log = logging.getLogger("concordia.coordinator")

MAX_POLL_WAIT_S = 25.0


class FederationService(federation_pb2_grpc.FederationServicer):
    """Site → coordinator. Each handler checks and converts, then lets the application act."""

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
        """Record the site's certificate, version and policy; hand it the signed roster.

        The certificate kept here is what other sites get to verify its key signatures."""
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
        policy = convert.policy_from_wire(request.policy)
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
        """The site's current task, waiting up to `wait_ms` (capped) for one; else IDLE.

        Holding the call open is what lets a site behind a firewall hear of work promptly."""
        site = await self._site(request.site_id, context)
        self.c.store.touch_site(site)
        return await self._next_task(site, request.wait_ms)

    async def PushResult(
        self, request: federation_pb2.TaskResult, context: aio.ServicerContext
    ) -> federation_pb2.PushAck:
        """Take a site's answer to its outstanding task; persisted before the site is answered.

        A result for any other task (a replay) is refused with FAILED_PRECONDITION, a value out
        of range with INVALID_ARGUMENT, before the engine sees it; both are audited."""
        site = await self._site("", context)
        self.c.store.touch_site(site)
        duplicate = await self._take_result(site, request, context)
        return federation_pb2.PushAck(task_id=request.task_id, duplicate=duplicate)

    async def PushAndPull(
        self, request: federation_pb2.PushAndPullRequest, context: aio.ServicerContext
    ) -> federation_pb2.Task:
        """PushResult, then PullTask, in one call: the same result checks and refusals (a
        refused result ends the call with its status and no task), persisted before the
        long-poll starts. Half the RPCs per site and stage, and so half the TLS, interceptor and
        servicer work the coordinator does for each site in a round."""
        site = await self._site("", context)
        self.c.store.touch_site(site)
        await self._take_result(site, request.result, context)
        return await self._next_task(site, request.wait_ms)

    async def _next_task(self, site: str, wait_ms: int) -> federation_pb2.Task:
        """The long-poll of PullTask and PushAndPull: `site`'s current task, waiting up to
        `wait_ms` (capped at MAX_POLL_WAIT_S) for one, else an IDLE task.

        A new roster ends the wait with IDLE, task or not: the caller was admitted under the
        old one, and its next call meets the new one at the door. So a revoked or superseded
        certificate is refused within about a second (the roster's re-read interval), not when
        its parked call would have timed out, and is handed no task in between."""
        wait = min(wait_ms / 1000.0, MAX_POLL_WAIT_S)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait
        admitted_under = self._roster_version()
        while True:
            if self._roster_version() != admitted_under:
                return _idle()
            found = self.c.find_task(site)
            if found is not None:
                engine, task = found
                return convert.task_to_wire(task, engine, self.c.certificates.fingerprint)
            remaining = give_up - loop.time()
            if remaining <= 0:
                return _idle()
            await self.c.wait_for_task(site, remaining)

    def _roster_version(self) -> int | None:
        return None if self.c.roster is None else self.c.roster.version_in_force

    async def _take_result(
        self, site: str, request: federation_pb2.TaskResult, context: aio.ServicerContext
    ) -> bool:
        """The push of PushResult and PushAndPull: check `site`'s result and hand it to its
        engine; True if it had been taken already (a retried push). A refusal aborts the call
        (FAILED_PRECONDITION: answers no outstanding task; INVALID_ARGUMENT: a value out of
        range), audited, before the engine sees the result."""
        kind = task_kind_from_wire(request.kind)
        engine = self.c.engine_for_result(site, request.task_id)
        if engine is None or kind is None:
            reason = f"result for task {request.task_id[:12]!r} answers no outstanding task"
            self.c.reject_result(site, request.task_id, reason, None)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, reason)
            raise AssertionError("unreachable")
        if request.HasField("privacy"):
            try:
                check_privacy_report(request.privacy)
            except SiteInputError as exc:  # before the engine sees it: its state is unchanged
                self.c.reject_result(site, request.task_id, exc.reason, engine.run_id)
                log.warning("result from %s rejected: %s", site, exc.reason)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.reason)
                raise AssertionError("unreachable") from None
        refused = False
        if request.HasField("published_metrics"):  # a site's own figures: never in any sum
            try:
                check_published_metrics(request, kind)
            except SiteInputError as exc:  # dropped, audited; the result itself goes on
                refused = True
                detail = {"run_id": engine.run_id, "reason": exc.reason}
                self.c.store.audit.append(f"site:{site}", "published_metrics_refused", detail)
                log.warning("published metrics from %s refused: %s", site, exc.reason)
        result = convert.result_from_wire(request, kind, published_refused=refused)
        try:
            return self.c.take_result(engine, site, result, len(request.payload))
        except ResultRejected as exc:  # audited by take_result
            code = (
                grpc.StatusCode.INVALID_ARGUMENT
                if exc.code == "invalid"
                else grpc.StatusCode.FAILED_PRECONDITION
            )
            await context.abort(code, exc.reason)
            raise AssertionError("unreachable") from None

    async def GetCertificates(
        self, request: federation_pb2.GetCertificatesRequest, context: aio.ServicerContext
    ) -> federation_pb2.GetCertificatesResponse:
        """The certificates (site, PEM, fingerprint) of the sites with these fingerprints, so a
        site fetches each participant's certificate once instead of in every session. They are
        public; the site checks each one at session time (CA, name, roster, fingerprint)."""
        await self._site("", context)
        try:
            found = self.c.certificates.certificates(request.sha256)
        except CertificateRequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("unreachable") from None
        return federation_pb2.GetCertificatesResponse(
            certificates=[
                federation_pb2.ParticipantCertificate(
                    site_id=site, certificate_pem=pem, certificate_sha256=sha256
                )
                for site, pem, sha256 in found
            ]
        )


def _idle() -> federation_pb2.Task:
    """Nothing to do now: the site pulls again at once."""
    return federation_pb2.Task(task_id="", kind=federation_pb2.TASK_KIND_IDLE, retry_after_ms=0)
