"""Who may call what: the peer certificate decides, never a message field.

An interceptor wraps every handler: it reads the mutual-TLS peer certificate, maps it to an
Identity (site, operator with role, or nothing), checks that this very certificate is the
identity's active one on the signed consortium roster (a CA signature alone is not enough: a
revoked, superseded or never-rostered certificate is refused), then checks the method against
`AUTHORISATION`, before the handler runs. Denials are audited, answered with
PERMISSION_DENIED / UNAUTHENTICATED, and logged (rate-limited) as one line naming the peer
address, the certificate's subject and fingerprint, the reason and what to do: after a successful
handshake this is where a revoked, superseded or unrostered certificate shows.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import grpc
from cryptography import x509
from grpc import aio

from coordinator.guard import RateLimitedLog
from coordinator.wrapping import WrappingInterceptor
from federation.identity import (
    Identity,
    IdentityError,
    IdentityKind,
    OperatorRole,
    identity_from_certificate,
    load_certificate,
)
from federation.roster import Roster, RosterError, certificate_fingerprint, load_signed_roster
from federation.tls import PEER_CERT_KEY

log = logging.getLogger("concordia.coordinator.auth")

Principal = tuple[IdentityKind, OperatorRole | None]
SITE: frozenset[Principal] = frozenset({("site", None)})
ADMIN: frozenset[Principal] = frozenset({("operator", "admin")})
OPERATOR: frozenset[Principal] = frozenset({("operator", "admin"), ("operator", "viewer")})

_FEDERATION = "/concordia.federation.v1.Federation/"
_ADMIN = "/concordia.federation.v1.Admin/"

AUTHORISATION: Mapping[str, frozenset[Principal]] = MappingProxyType(
    {
        # site -> coordinator: only sites, each acting as its certificate's site id
        _FEDERATION + "Hello": SITE,
        _FEDERATION + "PullTask": SITE,
        _FEDERATION + "PushResult": SITE,
        _FEDERATION + "PushAndPull": SITE,
        _FEDERATION + "GetCertificates": SITE,
        # operator -> coordinator: changing runs or taking a model out needs the admin role
        _ADMIN + "SubmitRun": ADMIN,
        _ADMIN + "StopRun": ADMIN,
        _ADMIN + "ExportRun": ADMIN,
        _ADMIN + "ListRuns": OPERATOR,
        _ADMIN + "GetRun": OPERATOR,
        _ADMIN + "WatchRun": OPERATOR,
        _ADMIN + "ListSites": OPERATOR,
        _ADMIN + "GetAudit": OPERATOR,
        _ADMIN + "VerifyAudit": OPERATOR,
    }
)
"""Full gRPC method path -> the (kind, role) pairs allowed to call it. Anything else is refused."""

PUBLIC_PREFIXES = ("/grpc.health.v1.Health/",)

current_identity: contextvars.ContextVar[Identity] = contextvars.ContextVar("current_identity")


def authorise(method: str, identity: Identity | None) -> str | None:
    """None if `identity` may call `method` (full gRPC method path), else the reason it may not.

    Pure, so the whole table can be tested without a server; the reason is what the caller and
    the audit log see, so it names the role or kind that was missing."""
    if method.startswith(PUBLIC_PREFIXES):
        return None
    if identity is None:
        return "no Concordia client certificate"
    allowed = AUTHORISATION.get(method)
    if allowed is None:
        return f"unknown method {method}"
    if (identity.kind, identity.role) in allowed:
        return None
    if any(kind == identity.kind for kind, _ in allowed):
        return f"role {identity.role} may not {method.rsplit('/', 1)[-1]}"
    kinds = " or ".join(sorted({kind for kind, _ in allowed}))
    article = "an" if kinds[0] in "aeiou" else "a"
    return f"{identity.uri} is not {article} {kinds}"


class RosterWatcher:
    """The signed consortium roster the coordinator enforces, re-read when its file changes.

    The file's mtime/inode is looked at most once per `interval_s`, so `fedctl provision revoke`
    (which rewrites it atomically) takes effect on a running coordinator within about a second. A
    rewritten file that does not verify, or holds an older version, is refused and the last good
    roster stays in force: a broken copy must not open or close the door.
    """

    def __init__(
        self,
        path: Path,
        ca_certificate: x509.Certificate,
        *,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[Roster], None] | None = None,
    ) -> None:
        self.path = path
        self._ca = ca_certificate
        self._interval = interval_s
        self._clock = clock
        self.on_change = on_change
        self._stamp = self._stat()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RosterError(
                f"cannot read the consortium roster {path} ({exc.strerror}); every kit"
                " `fedctl provision` writes has roster.json next to ca.pem"
            ) from None
        try:
            self._roster = load_signed_roster(data, ca_certificate)
        except RosterError as exc:
            raise RosterError(f"{path}: {exc}") from None
        self._signed = data
        self._checked = clock()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    @property
    def roster(self) -> Roster:
        """The roster in force, re-read first if the file changed: every call decides on the
        newest signed roster, not on the one the process started with."""
        self.refresh()
        return self._roster

    @property
    def signed(self) -> bytes:
        """The whole signed roster.json in force, as handed to sites: they verify it with their
        own CA copy, so the coordinator passes it on but cannot alter it."""
        self.refresh()
        return self._signed

    @property
    def version_in_force(self) -> int:
        """The version of the roster in force, without re-reading the file: a long-poll compares
        it before and after it waits, and ends when it moved (see FederationService)."""
        return self._roster.version

    def refresh(self) -> None:
        """Re-read the file if it changed, at most once per interval: a revocation must take
        effect on a running coordinator, without a stat() on every call."""
        now = self._clock()
        if now - self._checked < self._interval:
            return
        self._checked = now
        stamp = self._stat()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        if stamp is None:
            log.warning("roster %s is gone; keeping version %d", self.path, self._roster.version)
            return
        try:
            data = self.path.read_bytes()
            roster = load_signed_roster(data, self._ca)
        except (OSError, RosterError) as exc:
            log.error(
                "roster %s refused, keeping version %d: %s", self.path, self._roster.version, exc
            )
            return
        if roster.version <= self._roster.version:
            if data != self._signed:
                log.error(
                    "roster %s has version %d, not newer than %d in force; refused",
                    self.path,
                    roster.version,
                    self._roster.version,
                )
            return
        self._roster, self._signed = roster, data
        log.info("roster %s: version %d in force", self.path, roster.version)
        if self.on_change is not None:
            self.on_change(roster)


def _peer(context: aio.ServicerContext) -> tuple[Identity | None, x509.Certificate | None]:
    pems = list(context.auth_context().get(PEER_CERT_KEY, ()))
    if len(pems) != 1:
        return None, None
    return _parsed_peer(bytes(pems[0]))


@functools.lru_cache(maxsize=4096)
def _parsed_peer(pem: bytes) -> tuple[Identity | None, x509.Certificate | None]:
    """A peer certificate parsed once, not on every RPC: the same few hundred certificates call
    again and again (the result depends on the bytes alone; the roster check is not cached)."""
    try:
        cert = load_certificate(pem)
    except IdentityError:
        return None, None
    try:
        return identity_from_certificate(cert), cert
    except IdentityError:
        return None, cert


_ROSTER_ADVICE = {
    "superseded": "the site still uses its old kit: install the renewed one",
    "revoked": "revoked with `fedctl provision revoke`; `fedctl provision renew SITE` re-admits it",
    "not on": "copy the newest OUT/ca/roster.json to the coordinator, or re-issue the kit",
}


def refusal_line(peer: str, cert: x509.Certificate | None, method: str, reason: str) -> str:
    """The coordinator's log line for a refused caller: who (peer address, certificate subject
    and fingerprint, the roster's key), what it tried, why, and what to do. Only certificate
    fields and the address: nothing a site holds about patients."""
    who = peer.removeprefix("ipv4:").removeprefix("ipv6:")
    if cert is not None:
        who += f" ({cert.subject.rfc4514_string()}, sha256 {certificate_fingerprint(cert)[:16]})"
    advice = next(
        (text for key, text in _ROSTER_ADVICE.items() if key in reason),
        "check the caller's kit and role",
    )
    return f"refused {who} calling {method.rsplit('/', 1)[-1]}: {reason}; {advice}"


class AuthorisationInterceptor(WrappingInterceptor):
    """Authorises each RPC from the peer certificate and the roster, before any handler runs,
    so no handler can forget to; `on_denied(identity, method, reason)` audits each refusal."""

    def __init__(
        self, on_denied: Callable[[Identity | None, str, str], None], roster: RosterWatcher
    ) -> None:
        super().__init__()
        self._on_denied = on_denied
        self._roster = roster
        self._refusals = RateLimitedLog(log)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """Wrap the method's handler so the check runs before it, whatever the method: a new
        RPC cannot be added without passing through the authorisation table."""
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
        identity, cert = _peer(context)
        reason = None
        if identity is not None and cert is not None and not method.startswith(PUBLIC_PREFIXES):
            reason = self._roster.roster.check(identity, cert)
        reason = reason or authorise(method, identity)
        if reason is not None:
            peer = context.peer() or "an unknown address"
            self._refusals.log(
                f"{peer.rsplit(':', 1)[0]} {reason}",
                logging.WARNING,
                refusal_line(peer, cert, method, reason),
            )
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
