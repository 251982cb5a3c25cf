"""This site's side of every secure-aggregation session: derive, verify, bind, answer.

The coordinator relays; it does not configure. On AdvertiseKeys the site verifies every
participant (consortium CA, signed roster, distinct sites), derives the session configuration
from the plan it accepted (`site_agent.sessions`) and joins only if the offered one is identical.
A session key is advertised once, ever. Before a masked input leaves, the release is bound to this
session for good (`ReleaseCache.bind`), so no release is ever in two session sums. Every refusal
is a `secagg_refused` audit entry and a task error; nothing is released.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from federation.audit import AuditLog
from federation.identity import Identity, IdentityError, load_certificate, verify_peer_certificate
from federation.plan import RunPlan
from federation.roster import certificate_fingerprint
from federation.tasks import PURPOSE_FROM_WIRE, SessionKey
from federation.wire.v1 import federation_pb2
from secagg.client import ClientSession
from secagg.config import SessionConfig, Stage
from secagg.errors import SecAggError
from secagg.messages import UnmaskRequest
from site_agent.cache import ReleaseBound, ReleaseCache, SessionStore
from site_agent.config import SitePolicy
from site_agent.errors import TaskFailed
from site_agent.peer_certificates import PeerCertificates
from site_agent.sessions import SessionRefused, check_offered, check_step, check_survivors
from site_agent.sessions import expected_config as derive_config

log = logging.getLogger("concordia.site")
K = federation_pb2


ParticipantCheck = Callable[[str, str], None]
"""(site name, certificate PEM) → None, or raises ValueError with the reason (the roster)."""


MAX_VERIFIED = 4096
"""Certificates whose CA verdict is kept (`SecaggAdapter._issued`); more than any consortium."""


@dataclass(frozen=True)
class _Issued:
    """What `verify_peer_certificate` established about one PEM, and its validity dates."""

    identity: Identity
    public_key: ec.EllipticCurvePublicKey
    not_before: dt.datetime
    not_after: dt.datetime


@dataclass(frozen=True)
class Participant:
    """A session participant as this site verified it (CA, roster, distinct), the only form in
    which participants reach the session code."""

    ident: int
    site: str
    certificate_pem: str
    public_key: ec.EllipticCurvePublicKey


class SecaggAdapter:
    """Answers the five secure-aggregation task kinds for one site, deriving every session
    parameter itself from the accepted plan (site sovereignty, module docstring)."""

    def __init__(
        self,
        site_id: str,
        policy: SitePolicy,
        identity_key: ec.EllipticCurvePrivateKey,
        ca_certificate: x509.Certificate,
        sessions: SessionStore,
        cache: ReleaseCache,
        audit: AuditLog,
        check_participant: ParticipantCheck | None = None,
        peer_certificates: PeerCertificates | None = None,
    ) -> None:
        self.site_id = site_id
        # Where a participant named by fingerprint only is looked up (site_agent/peer_certificates)
        self.peer_certificates = peer_certificates
        self.policy = policy
        self.identity_key = identity_key
        self.ca_certificate = ca_certificate
        self.sessions = sessions
        self.cache = cache
        self.audit = audit
        self.check_participant = check_participant
        # The session this site saved last, with the bytes it saved (`_session`).
        self._live: tuple[tuple[str, str, int, int], bytes, ClientSession] | None = None
        self._verified: dict[str, _Issued] = {}  # PEM -> the CA's verdict (`_issued`)

    def handle(self, task: federation_pb2.Task, plan: RunPlan) -> bytes:
        """The answer to one secure-aggregation task; raises TaskFailed (already audited)."""
        purpose = PURPOSE_FROM_WIRE.get(task.secagg.purpose)
        if purpose is None:
            raise TaskFailed(K.TASK_ERROR_INVALID_TASK, "unknown secure-aggregation purpose")
        step = SessionKey(task.run_id, purpose, task.round, task.attempt)
        try:
            check_step(plan, step)
            if task.kind == K.TASK_KIND_SECAGG_ADVERTISE_KEYS:
                return self._advertise(task, plan, step)
            return self._continue(task, plan, step)
        except (SecAggError, SessionRefused, ReleaseBound) as exc:
            raise self._refused(step, str(exc)) from None

    # ------------------------------------------------------------------ stages
    def _advertise(self, task: federation_pb2.Task, plan: RunPlan, step: SessionKey) -> bytes:
        participants = self._verify_participants(task.secagg)
        expected = derive_config(
            plan, self.policy, self.site_id, step, {p.ident: p.site for p in participants}
        )
        check_offered(expected, SessionConfig.from_bytes(task.secagg.session_config))
        stored = self.sessions.load(_key(step))
        if stored is not None:
            # The same session asked again (our answer was lost): the same advertisement, or
            # nothing. A session id is never advertised with new keys.
            saved = _unpack(stored)
            if saved.config == expected.to_bytes() and saved.advertisement:
                restored = self._restore(saved)
                if restored.stage is Stage.SHARE_KEYS:
                    return saved.advertisement
            raise SessionRefused(f"session {step.text} was already advertised here")
        mine = next(p.ident for p in participants if p.site == self.site_id)
        peers = {p.ident: p.certificate_pem for p in participants}
        keys = {p.ident: p.public_key for p in participants}
        session = ClientSession(expected, mine, self.identity_key, keys)
        out = session.advertise_keys()
        # Claimed and saved in one commit, before the keys leave (claimed once, ever).
        packed = _pack(_Saved(peers, expected.to_bytes(), out, session.to_bytes()))
        if not self.sessions.claim_and_save(step.text, _key(step), packed):
            raise SessionRefused(f"session {step.text} was already advertised here")
        self._live = (_key(step), packed, session)
        return out

    def _continue(self, task: federation_pb2.Task, plan: RunPlan, step: SessionKey) -> bytes:
        stored = self.sessions.load(_key(step))
        if stored is None:
            raise SessionRefused(f"no secure-aggregation session {step.text} here")
        saved = _unpack(stored)
        session = self._session(step, stored, saved)
        message = task.secagg.message
        kind = task.kind
        entry: tuple[str, dict[str, object]] | None = None  # audited once committed
        # The stage's writes (a binding, the Unmask mark, the new state) commit together, before
        # anything leaves: one durable commit a stage.
        with self._one_commit():
            if kind == K.TASK_KIND_SECAGG_SHARE_KEYS:
                out = session.share_keys(message)
            elif kind == K.TASK_KIND_SECAGG_MASKED_INPUT:
                out, entry = self._masked_input(session, message, step)
            elif kind == K.TASK_KIND_SECAGG_CONSISTENCY_CHECK:
                out = session.consistency_check(message)
            elif kind == K.TASK_KIND_SECAGG_UNMASK:
                check_survivors(plan, self.policy, len(UnmaskRequest.decode(message).survivors))
                # From here on the release is in a sum that can be opened (durable first).
                self.cache.mark_unmasked(step.run_id, step.purpose.value, step.round)
                out = session.unmask(message)
                entry = ("unmask_answered", _detail(step))
            else:
                raise TaskFailed(
                    K.TASK_ERROR_INVALID_TASK, f"unknown secure-aggregation task {kind}"
                )
            state = session.to_bytes()
            packed = self._save(step, _Saved(saved.peers, saved.config, saved.advertisement, state))
        if entry is not None:
            self.audit.append(self.site_id, *entry)
        self._live = (_key(step), packed, session)
        return out

    def _one_commit(self) -> AbstractContextManager[None]:
        """One transaction for the release cache's and the session store's writes when they
        share a connection (the agent sets them up so); else each commits on its own (a second
        connection's write inside the first's transaction would wait for its lock)."""
        if self.sessions.shares_connection_with(self.cache):
            return self.cache.transaction()
        return contextlib.nullcontext()

    def _masked_input(
        self, session: ClientSession, message: bytes, step: SessionKey
    ) -> tuple[bytes, tuple[str, dict[str, object]]]:
        """The masked input and its audit entry; the release is bound to this session first
        (in the stage's commit): never in another session's sum."""
        cached = self.cache.get(step.run_id, step.purpose.value, step.round)
        if cached is None or cached.vector is None:
            raise SessionRefused("no prepared release to mask")
        out = session.masked_input(message, cached.vector)
        bound = self.cache.bind(step.run_id, step.purpose.value, step.round, step.text)
        detail = {
            **_detail(step),
            "release_attempt": bound.meta.get("attempt"),
            "release_sha256": bound.sha256,
        }
        return out, ("release_masked", detail)

    # ------------------------------------------------------------------ helpers
    def _refused(self, step: SessionKey, reason: str) -> TaskFailed:
        self.audit.append(self.site_id, "secagg_refused", {**_detail(step), "reason": reason})
        log.warning("refused secure-aggregation task of %s: %s", step.text, reason)
        failed = TaskFailed(K.TASK_ERROR_SECAGG_VERIFICATION, reason[:500])
        failed.audited = True
        return failed

    def _restore(self, saved: _Saved) -> ClientSession:
        return ClientSession.from_bytes(saved.state, self.identity_key, _public_keys(saved.peers))

    def _session(self, step: SessionKey, stored: bytes, saved: _Saved) -> ClientSession:
        """The session object this site saved last if `stored` is still exactly what it saved
        (restoring it costs half a millisecond a stage: state, certificates, key checks), else
        restored from `stored`. Taken, not shared: a stage that fails midway leaves nothing
        behind to reuse, and the next one restores from what is stored."""
        live, self._live = self._live, None
        if live is not None and live[0] == _key(step) and live[1] == stored:
            return live[2]
        return self._restore(saved)

    def _save(self, step: SessionKey, saved: _Saved) -> bytes:
        packed = _pack(saved)
        self.sessions.save(_key(step), packed)
        return packed

    def _verify_participants(self, body: federation_pb2.SecaggTask) -> list[Participant]:
        """Every participant: a distinct id, a certificate the consortium CA issued to the site
        it claims, and the roster's active certificate of that site (a coordinator cannot slip
        in a key, a participant or a revoked site of its own)."""
        verified: dict[int, Participant] = {}
        for entry in body.participants:
            ident, site = int(entry.participant_id), entry.site_id
            pem = self._certificate_of(entry)
            try:
                issued = self._issued(pem)
            except (ValueError, IdentityError) as exc:
                raise SessionRefused(f"participant {ident} ({site}): {exc}") from None
            identity = issued.identity
            if identity.name != site:
                raise SessionRefused(
                    f"participant {ident} claims {site} but its certificate is {identity.name}"
                )
            if ident in verified:
                raise SessionRefused(f"participant id {ident} is listed twice")
            if self.check_participant is not None:
                try:
                    self.check_participant(site, pem)
                except ValueError as exc:
                    raise SessionRefused(f"participant {site}: {exc}") from None
            verified[ident] = Participant(ident, site, pem, issued.public_key)
        return [verified[i] for i in sorted(verified)]

    def _issued(self, pem: str) -> _Issued:
        """`verify_peer_certificate` of a participant's PEM, once per PEM: issued by the CA, an
        ECDSA key, a site identity, the key usage are facts of its bytes, and re-verifying every
        participant in every session was 2 ms a round. Its dates are checked at every use."""
        issued, now = self._verified.get(pem), _now()
        if issued is None:
            identity = verify_peer_certificate(
                pem.encode(), self.ca_certificate, expected_kind="site", now=now
            )
            cert = load_certificate(pem)
            key = cert.public_key()
            assert isinstance(key, ec.EllipticCurvePublicKey)  # verify_peer_certificate checked
            issued = _Issued(identity, key, cert.not_valid_before_utc, cert.not_valid_after_utc)
            if len(self._verified) >= MAX_VERIFIED:
                self._verified.clear()
            self._verified[pem] = issued
            return issued
        if now < issued.not_before or now > issued.not_after:
            raise IdentityError(
                f"certificate is not valid at {now.isoformat()} (valid "
                f"{issued.not_before.isoformat()} to {issued.not_after.isoformat()})"
            )
        return issued

    def _certificate_of(self, entry: federation_pb2.ParticipantCertificate) -> str:
        """A participant's certificate: sent in the session (older coordinators), or named by
        fingerprint and held here. Either way it must hash to the fingerprint named, if any."""
        ident, site, sha256 = int(entry.participant_id), entry.site_id, entry.certificate_sha256
        pem = entry.certificate_pem
        if not pem and sha256 and self.peer_certificates is not None:
            pem = self.peer_certificates.get(sha256) or ""
        if not pem:
            raise SessionRefused(
                f"participant {ident} ({site}): no certificate with fingerprint {sha256[:16]}"
                " is held here (the coordinator did not provide it)"
            )
        if sha256:
            try:
                actual = _fingerprint(pem)
            except (IdentityError, ValueError) as exc:
                raise SessionRefused(f"participant {ident} ({site}): {exc}") from None
            if actual != sha256.lower():
                raise SessionRefused(
                    f"participant {ident} ({site}): the certificate sent is not the one its"
                    " fingerprint names"
                )
        return pem


def _now() -> dt.datetime:
    """The moment a participant's certificate must be valid at (tests move it)."""
    return dt.datetime.now(dt.UTC)


@functools.lru_cache(maxsize=MAX_VERIFIED)
def _fingerprint(pem: str) -> str:
    return certificate_fingerprint(load_certificate(pem))


def _key(step: SessionKey) -> tuple[str, str, int, int]:
    return (step.run_id, step.purpose.value, step.round, step.attempt)


def _detail(step: SessionKey) -> dict[str, object]:
    return {
        "run_id": step.run_id,
        "purpose": step.purpose.value,
        "round": step.round,
        "attempt": step.attempt,
        "session": step.text,
    }


def _public_keys(pems: dict[int, str]) -> dict[int, ec.EllipticCurvePublicKey]:
    keys: dict[int, ec.EllipticCurvePublicKey] = {}
    for ident, pem in pems.items():
        public = x509.load_pem_x509_certificate(pem.encode()).public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise SessionRefused(f"participant {ident}: not an EC key")
        keys[ident] = public
    return keys


@dataclass(frozen=True)
class _Saved:
    """What the site keeps per session: verified peers, the derived config, its own
    advertisement (to answer a lost AdvertiseKeys again, identically) and the client state."""

    peers: dict[int, str]
    config: bytes
    advertisement: bytes
    state: bytes


def _pack(saved: _Saved) -> bytes:
    header = json.dumps(
        {
            "peers": {str(k): v for k, v in saved.peers.items()},
            "config": saved.config.hex(),
            "advertisement": base64.b64encode(saved.advertisement).decode("ascii"),
        }
    ).encode()
    return len(header).to_bytes(4, "big") + header + saved.state


def _unpack(blob: bytes) -> _Saved:
    try:
        size = int.from_bytes(blob[:4], "big")
        header = json.loads(blob[4 : 4 + size])
        return _Saved(
            peers={int(k): str(v) for k, v in header["peers"].items()},
            config=bytes.fromhex(header["config"]),
            advertisement=base64.b64decode(header["advertisement"]),
            state=blob[4 + size :],
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise SessionRefused(f"the stored session state is unreadable ({exc})") from None
