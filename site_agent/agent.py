"""The site agent: the outbound-only connection loop that pulls tasks and pushes answers.

Hospitals accept no inbound connections, so the agent calls out: `Hello` (its policy summary; the
coordinator's roster and suggested long-poll wait come back), then it answers each task and
long-polls for the next in one `PushAndPull` (`site_agent.serve_loop`), forever. It reconnects
with capped, jittered exponential backoff, so a coordinator restart shows up only as a log line,
and it writes a heartbeat file for the container health check. When the coordinator is
unavailable, `site_agent.connection.diagnose` says why (name, port, which certificate and why),
logged once per cause rather than once per attempt; an expired site certificate stops the agent
at start. What a task *means* is `site_agent.handlers`: every release is charged to the privacy
ledger before it can leave the site, and every decision is written to the audit log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc import aio

from federation.audit import AuditLog
from federation.faults import Faults
from federation.fsmodes import ensure_private_dir, write_private_file_atomic
from federation.roster import ROSTER_FILE, RosterError
from federation.tls import TlsKit, TransportSettings, aio_secure_channel
from federation.version import __version__
from federation.wire.v1 import federation_pb2, federation_pb2_grpc
from site_agent.cache import ReleaseCache, SessionStore
from site_agent.config import SiteConfig
from site_agent.connection import diagnose
from site_agent.connection_problems import ConnectionProblem, check_own_certificate
from site_agent.handlers import TaskHandlers
from site_agent.ledger import PrivacyLedger
from site_agent.opacus_adapters import warm_up
from site_agent.peer_certificates import PeerCertificates
from site_agent.policy import policy_summary
from site_agent.pseudonyms import pseudonym_key
from site_agent.records import ProcessingRecords
from site_agent.retention import PurgeCounts, purge_expired
from site_agent.roster import SiteRoster
from site_agent.sealing import StateSealer, load_state_key
from site_agent.secagg_adapter import SecaggAdapter
from site_agent.serve_loop import serve
from site_agent.split import split_fingerprint

log = logging.getLogger("concordia.site")

POLL_WAIT_MS = 20_000
INITIAL_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
DIAGNOSE_TIMEOUT_S = 5.0
HEARTBEAT_FILE = "heartbeat.json"
HEARTBEAT_INTERVAL_S = 10.0
AUDIT_HEAD_INTERVAL_S = 1.0
RETENTION_INTERVAL_S = 86_400.0


def long_poll_wait_ms(suggested_ms: int) -> int:
    """How long this site asks the coordinator to hold a PullTask: its own POLL_WAIT_MS, lowered
    to the coordinator's suggestion from Hello (if any). Only lowered: a coordinator (or a proxy
    in front of it) that cuts calls sooner is respected, but none can make the site wait longer."""
    return min(POLL_WAIT_MS, suggested_ms) if suggested_ms > 0 else POLL_WAIT_MS


class SiteAgent:
    """One hospital's agent: its state (ledger, release cache, sessions, audit log, roster), the
    task handlers over it, and the connection loop. `run_forever()` until cancelled; `handle(task)`
    answers one task without a connection (tests drive the agent that way)."""

    def __init__(
        self,
        config: SiteConfig,
        *,
        faults: Faults | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`faults`: the end-to-end tests' crash points and update recorder; none in production.
        `clock`: Unix seconds for records of processing and retention (tests inject one)."""
        self.config = config
        self.clock = clock
        self.site_id = config.site_id
        # The kit first: an unreadable or expired certificate stops the agent before the ledger,
        # audit log or secrets exist (CertificateNotValid is a TlsError: one line, exit code 2).
        self.kit = TlsKit.from_files(
            Path(config.tls.ca), Path(config.tls.cert), Path(config.tls.key)
        )
        expiry_warning = check_own_certificate(self.kit.certificate)
        if expiry_warning is not None:
            log.warning("%s", expiry_warning)
        state_dir = ensure_private_dir(config.state_dir)  # 0700: ledger, secrets, audit
        db = state_dir / "site.sqlite"
        self.ledger = PrivacyLedger(
            db, clock=time.time, split_fingerprint=split_fingerprint(config.data)
        )
        # Releases and session secrets are encrypted at rest (site_agent/sealing.py).
        sealer = StateSealer(load_state_key(state_dir))
        self.cache = ReleaseCache(db, sealer)
        # One connection for both: a stage's binding and session state commit together.
        self.sessions = SessionStore(self.cache, sealer)
        # Entries commit before anything is released; the head file (a copy of the chain's head
        # for operators) is written at most once a second, off the release path (`_audit_heads`).
        self.audit = AuditLog(state_dir / "audit.sqlite", clock=time.time, defer_head=True)
        # records of processing, erasure list (GDPR); on the ledger's connection, so a charge and
        # the run's ε in its record commit together (`ReleaseCharging._charge`)
        self.records = ProcessingRecords(self.ledger)
        key = serialization.load_pem_private_key(self.kit.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the site key must be an ECDSA P-256 key (as fedctl provision makes)")
        self.identity_key = key
        # Who may be in a session: the CA-signed roster (kit copy, or a newer one from Hello).
        self.roster = SiteRoster(
            state_dir, Path(config.tls.ca).parent / ROSTER_FILE, self.kit.ca_certificate
        )
        for problem in self.roster.problems:
            log.warning("ignored a roster copy: %s", problem)
        self.peer_certificates = PeerCertificates(db)
        self.secagg = SecaggAdapter(
            self.site_id,
            config.policy,
            key,
            self.kit.ca_certificate,
            self.sessions,
            self.cache,
            self.audit,
            check_participant=self.roster.check_participant,
            peer_certificates=self.peer_certificates,
        )
        self.handlers = TaskHandlers(
            config,
            ledger=self.ledger,
            cache=self.cache,
            sessions=self.sessions,
            audit=self.audit,
            secagg=self.secagg,
            plans_dir=ensure_private_dir(state_dir / "plans"),
            faults=faults if faults is not None else Faults(),
            records=self.records,
            pseudonym_key=pseudonym_key(state_dir),
            clock=clock,
        )
        self.heartbeat_path = state_dir / HEARTBEAT_FILE
        self.poll_wait_ms = POLL_WAIT_MS
        self.connected = False
        self.last_task: str | None = None
        # The outage cause last logged (None: no outage; the string: not explained) and how many
        # attempts have failed since the last connection.
        self._reported: ConnectionProblem | str | None = None
        self._failed_attempts = 0

    def handle(self, task: federation_pb2.Task) -> federation_pb2.TaskResult:
        """Answer one task (runs in a worker thread: training is CPU-bound); never raises."""
        return self.handlers.handle(task)

    # ------------------------------------------------------------------ the loop
    async def run_forever(self) -> None:
        """Serve the coordinator until cancelled (SIGTERM, Ctrl-C), with the heartbeat and the
        daily retention purge beside (the first purge runs now, on start), and torch's lazy
        imports warmed up in a thread (`site_agent.opacus_adapters.warm_up`)."""
        heartbeat = asyncio.create_task(self._heartbeat_forever())
        retention = asyncio.create_task(self._retention_forever())
        heads = asyncio.create_task(self._audit_heads_forever())
        warm = asyncio.create_task(asyncio.to_thread(warm_up))  # off the first round's path
        try:
            await self._connect_forever()
        finally:
            for task in (heartbeat, retention, heads, warm):
                task.cancel()
            self.audit.flush_head()

    def purge_expired(self) -> PurgeCounts:
        """Purge run state idle beyond `policy.retention_days` (site_agent/retention.py); audited
        as `retention_purge` with the counts, also when there was nothing to purge."""
        counts, runs = purge_expired(
            now=self.clock(),
            retention_days=self.config.policy.retention_days,
            records=self.records,
            ledger=self.ledger,
            cache=self.cache,
            sessions=self.sessions,
            plans_dir=self.handlers.plans_dir,
            active=self.handlers.runs,  # type: ignore[arg-type]
        )
        detail = {
            **counts.to_json(),
            "run_ids": runs,
            "retention_days": self.config.policy.retention_days,
        }
        self.audit.append(self.site_id, "retention_purge", detail)
        return counts

    async def _retention_forever(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.purge_expired)
            except Exception:  # a failed purge is retried tomorrow; it must not stop the agent
                log.exception("retention purge failed")
            await asyncio.sleep(RETENTION_INTERVAL_S)

    async def _heartbeat_forever(self) -> None:
        """Liveness for the container health check: the event loop writes state_dir/heartbeat.json
        every HEARTBEAT_INTERVAL_S (also while a training thread runs), so a hung agent goes stale
        while a process-level check would still see it running."""
        while True:
            record = {"ts": time.time(), "connected": self.connected, "last_task": self.last_task}
            try:
                write_private_file_atomic(self.heartbeat_path, json.dumps(record).encode())
            except OSError as exc:
                log.warning("cannot write %s: %s", self.heartbeat_path, exc)
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)

    async def _connect_forever(self) -> None:
        """Connect, Hello, serve; on any RPC failure wait (capped, jittered backoff) and again."""
        backoff = INITIAL_BACKOFF_S
        settings = TransportSettings()
        while True:
            try:
                async with aio_secure_channel(
                    self.config.coordinator_address, self.kit, settings
                ) as channel:
                    stub = federation_pb2_grpc.FederationStub(channel)  # type: ignore[no-untyped-call]
                    await self._hello(stub)
                    self.connected = True
                    self._recovered()
                    backoff = INITIAL_BACKOFF_S
                    await self._serve(stub)
            except aio.AioRpcError as exc:
                self.connected = False
                self._failed_attempts += 1
                if exc.code() in (
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.UNAUTHENTICATED,
                ):
                    refusal = f"coordinator refused this site: {exc.details()}"
                    if refusal != self._reported:  # once per cause, not once per retry
                        log.error("%s; retrying with backoff (logged once)", refusal)
                        self._reported = refusal
                elif exc.code() == grpc.StatusCode.UNAVAILABLE:
                    await self._report_unavailable(exc, backoff)
                else:
                    log.warning(
                        "coordinator unreachable (%s); retrying in %.0f s", exc.code().name, backoff
                    )
            await asyncio.sleep(backoff * (0.8 + 0.4 * random.random()))
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _report_unavailable(self, exc: aio.AioRpcError, backoff: float) -> None:
        """Log why the coordinator is unavailable, once per cause: gRPC says only UNAVAILABLE
        for a wrong address, a closed port and every certificate problem, so each failed attempt
        is diagnosed (one handshake per backoff interval, in a thread) but a line is written only
        when the cause differs from the one last logged; a restart loop's log stays readable."""
        address = self.config.coordinator_address
        try:
            problem = await asyncio.to_thread(
                diagnose,
                address,
                self.kit.ca_pem,
                self.kit.cert_pem,
                self.kit.key_pem,
                DIAGNOSE_TIMEOUT_S,
            )
        except Exception:  # the diagnosis is advice: it must never stop the reconnect loop
            log.debug("connection diagnosis failed", exc_info=True)
            problem = None
        cause: ConnectionProblem | str = problem if problem is not None else "unexplained"
        if cause == self._reported:
            log.debug("coordinator still unavailable (%s): %s", exc.code().name, exc.details())
            return
        self._reported = cause
        retry = (
            f"retrying every {backoff:.0f} s, backing off to every {MAX_BACKOFF_S:.0f} s;"
            " this message repeats only if the cause changes"
        )
        if problem is None:
            log.warning(
                "coordinator unreachable (UNAVAILABLE) at %s: %s. Its name, port and TLS"
                " handshake check out, so it may be starting or overloaded; %s",
                address,
                exc.details(),
                retry,
            )
        else:
            log.warning("coordinator unreachable [%s]: %s; %s", problem.code, problem, retry)

    def _recovered(self) -> None:
        """After an outage was logged, say that it is over (and how long it took, in attempts)."""
        if self._reported is not None:
            log.info(
                "connection to the coordinator at %s restored after %d failed attempts",
                self.config.coordinator_address,
                self._failed_attempts,
            )
        self._reported = None
        self._failed_attempts = 0

    async def _hello(self, stub: federation_pb2_grpc.FederationStub) -> None:
        """Introduce the site (version, policy summary with ε spent); take the coordinator's
        roster (if newer and CA-signed) and its long-poll suggestion (as an upper bound)."""
        summary = policy_summary(
            self.config.policy, self.ledger.epsilon_lifetime(self.config.policy.max_delta)
        )
        response = await stub.Hello(
            federation_pb2.HelloRequest(
                site_id=self.site_id,
                agent_version=__version__,
                policy=federation_pb2.PolicySummary(**summary),
            )
        )
        log.info("connected to coordinator %s", response.coordinator_id)
        self.handlers.coordinator_id = response.coordinator_id or None
        self.poll_wait_ms = long_poll_wait_ms(response.poll_wait_ms)
        self._take_roster(response.roster)

    def _take_roster(self, data: bytes) -> None:
        """A newer CA-signed roster from the coordinator replaces ours; anything else is kept
        out (an older one is ignored, a forged one audited)."""
        try:
            change = self.roster.offer(data)
        except RosterError as exc:
            log.warning("refused the roster the coordinator sent: %s", exc)
            self.audit.append(self.site_id, "roster_refused", {"reason": str(exc)[:500]})
            return
        if change is not None:
            log.info("consortium roster updated: %s", change)
            self.audit.append(
                self.site_id, "roster_updated", {"version": self.roster.version, "change": change}
            )

    async def _audit_heads_forever(self) -> None:
        """The audit head file, every AUDIT_HEAD_INTERVAL_S if entries were appended (and at
        exit), as the coordinator writes its own every tick: the entries commit before anything
        is released, and the file (write, fsync, rename) after each of a round's three entries
        was milliseconds on the path of a release, or, written after the answer, a disk flush
        colliding with the next stage's commits."""
        while True:
            await asyncio.sleep(AUDIT_HEAD_INTERVAL_S)
            try:  # an OSError is logged by flush_head and retried at the next interval
                await asyncio.to_thread(self.audit.flush_head)
            except Exception:  # the file is a copy for operators: it must never stop the agent
                log.exception("cannot write the audit head file")

    async def _serve(self, stub: federation_pb2_grpc.FederationStub) -> None:
        """Answer tasks on this connection until an RPC fails (then `_connect_forever`
        reconnects): each result goes back with the request for the next task in one
        `PushAndPull`, with `PushResult` + `PullTask` where it cannot (site_agent/serve_loop.py)."""
        await serve(self, stub, lambda: self._hello(stub))
