"""Who may call what: the peer certificate decides, never a message field.

An interceptor wraps every handler: it reads the mutual-TLS peer certificate, maps it to an
Identity (site, operator with role, or nothing) and checks it against the method's rule before the
handler runs. Denials are audited and answered with PERMISSION_DENIED / UNAUTHENTICATED.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from federation.identity import Identity
from federation.tls import peer_identity

SITE_METHODS = {"Hello", "PullTask", "PushResult"}
ADMIN_WRITE_METHODS = {"SubmitRun", "StopRun"}
ADMIN_READ_METHODS = {
    "ListRuns",
    "GetRun",
    "WatchRun",
    "ListSites",
    "GetAudit",
    "VerifyAudit",
    "ExportRun",
}
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/",)

current_identity: contextvars.ContextVar[Identity] = contextvars.ContextVar("current_identity")


def authorise(method: str, identity: Identity | None) -> str | None:
    """None if `identity` may call `method` (full gRPC method path), else the reason it may not."""
    if method.startswith(PUBLIC_PREFIXES):
        return None
    if identity is None:
        return "no Concordia client certificate"
    name = method.rsplit("/", 1)[-1]
    service = method.rsplit("/", 2)[-2] if method.count("/") >= 2 else ""
    if service.endswith(".Federation") and name in SITE_METHODS:
        return None if identity.kind == "site" else f"{identity.uri} is not a site"
    if service.endswith(".Admin"):
        if identity.kind != "operator":
            return f"{identity.uri} is not an operator"
        if name in ADMIN_WRITE_METHODS:
            return None if identity.role == "admin" else f"role {identity.role} may not {name}"
        if name in ADMIN_READ_METHODS:
            return None
    return f"unknown method {method}"


class AuthorisationInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    """Authorises each RPC from the peer certificate; `on_denied(identity, method, reason)`."""

    def __init__(self, on_denied: Callable[[Identity | None, str, str], None]) -> None:
        self._on_denied = on_denied

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method: str = details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._guard_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._guard_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _check(self, method: str, context: aio.ServicerContext) -> None:
        identity = peer_identity(context)
        reason = authorise(method, identity)
        if reason is not None:
            self._on_denied(identity, method, reason)
            code = (
                grpc.StatusCode.UNAUTHENTICATED
                if identity is None
                else grpc.StatusCode.PERMISSION_DENIED
            )
            await context.abort(code, reason)
        if identity is not None:
            current_identity.set(identity)

    def _guard_unary(self, method: str, behaviour: Any) -> Any:
        async def guarded(request: Any, context: aio.ServicerContext) -> Any:
            await self._check(method, context)
            return await behaviour(request, context)

        return guarded

    def _guard_stream(self, method: str, behaviour: Any) -> Any:
        async def guarded(request: Any, context: aio.ServicerContext) -> Any:
            await self._check(method, context)
            async for item in behaviour(request, context):
                yield item

        return guarded
