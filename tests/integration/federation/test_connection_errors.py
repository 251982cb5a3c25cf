"""Why a site cannot reach its coordinator, on real certificates and real loopback gRPC servers.

Every case below reaches the site as the same gRPC `UNAVAILABLE`; `site_agent.connection.diagnose`
must tell them apart, each with its own code and a message that names the address and the
certificate involved. The certificates come from CAs made here (as `fedctl provision` makes
them), with dates moved into the past or future through `CertificateAuthority.issue(now=...)`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import grpc.aio
import pytest

from federation.identity import Identity
from federation.pki import CertificateAuthority, IssuedCertificate
from federation.provisioning import site_config_text
from federation.tls import TlsKit, server_credentials, server_options
from federation.wire.v1 import federation_pb2 as pb
from federation.wire.v1 import federation_pb2_grpc as pb_grpc
from site_agent import agent as agent_module
from site_agent import connection
from site_agent.connection import diagnose
from site_agent.connection_problems import (
    CertificateNotValid,
    ConnectionProblem,
    ProblemCode,
    check_own_certificate,
)

pytestmark = pytest.mark.integration

COORDINATOR = Identity("coordinator", "coordinator")
SITE = Identity("site", "hospital-a")
NOW = dt.datetime.now(dt.UTC)
TIMEOUT = 5.0


class HelloServicer(pb_grpc.FederationServicer):
    """Enough of a coordinator for the agent loop's Hello."""

    def Hello(self, request: pb.HelloRequest, context: grpc.ServicerContext) -> pb.HelloResponse:
        return pb.HelloResponse(coordinator_id="test-coordinator")


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("conn-test", validity_days=365)


@pytest.fixture(scope="module")
def site(ca: CertificateAuthority) -> TlsKit:
    issued = ca.issue(SITE, validity_days=90)
    return TlsKit(ca.issued.certificate_pem, issued.certificate_pem, issued.key_pem)


def coordinator_cert(
    ca: CertificateAuthority,
    *,
    hosts: tuple[str, ...] = ("localhost",),
    ips: tuple[str, ...] = ("127.0.0.1",),
    now: dt.datetime | None = None,
) -> IssuedCertificate:
    return ca.issue(COORDINATOR, validity_days=1, dns_names=hosts, ip_addresses=ips, now=now)


Server = Callable[[CertificateAuthority, IssuedCertificate], str]


@pytest.fixture
def serve() -> Iterator[Server]:
    """Start a real mutual-TLS gRPC server on loopback with this CA and certificate."""
    servers: list[grpc.Server] = []

    def start(ca: CertificateAuthority, cert: IssuedCertificate) -> str:
        kit = TlsKit(ca.issued.certificate_pem, cert.certificate_pem, cert.key_pem)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=server_options())
        pb_grpc.add_FederationServicer_to_server(HelloServicer(), server)  # type: ignore[no-untyped-call]
        port = server.add_secure_port("127.0.0.1:0", server_credentials(kit))
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(grace=None)


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def run(address: str, kit: TlsKit) -> ConnectionProblem | None:
    return diagnose(address, kit.ca_pem, kit.cert_pem, kit.key_pem, TIMEOUT)


def expect(address: str, kit: TlsKit, code: ProblemCode, *needles: str) -> str:
    problem = run(address, kit)
    assert problem is not None, f"{address}: no problem found"
    assert problem.code is code, problem.message
    assert address in problem.message
    for needle in needles:
        assert needle in problem.message, problem.message
    return problem.message


# ------------------------------------------------------------------ one message per cause
def test_a_healthy_coordinator_has_no_problem(
    ca: CertificateAuthority, site: TlsKit, serve: Server
) -> None:
    assert run(serve(ca, coordinator_cert(ca)), site) is None


def test_a_name_that_does_not_resolve(site: TlsKit) -> None:
    expect("nonexistent.invalid:7443", site, ProblemCode.DNS, "'nonexistent.invalid'", "DNS")


def test_a_closed_port(site: TlsKit) -> None:
    expect(f"127.0.0.1:{free_port()}", site, ProblemCode.REFUSED, "refused", "port")


def test_a_coordinator_from_another_consortium(site: TlsKit, serve: Server) -> None:
    other = CertificateAuthority.create("other-consortium", validity_days=365)
    address = serve(other, coordinator_cert(other))
    expect(address, site, ProblemCode.UNKNOWN_CA, "CN=coordinator", "O=other-consortium")


def test_an_expired_coordinator_certificate(
    ca: CertificateAuthority, site: TlsKit, serve: Server
) -> None:
    cert = coordinator_cert(ca, now=NOW - dt.timedelta(days=10))
    until = cert.certificate.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
    message = expect(
        serve(ca, cert), site, ProblemCode.SERVER_CERT_EXPIRED, "expired", "CN=coordinator", until
    )
    assert "renew" in message


def test_a_coordinator_certificate_not_yet_valid(
    ca: CertificateAuthority, site: TlsKit, serve: Server
) -> None:
    cert = coordinator_cert(ca, now=NOW + dt.timedelta(days=10))
    since = cert.certificate.not_valid_before_utc.strftime("%Y-%m-%d %H:%M UTC")
    expect(serve(ca, cert), site, ProblemCode.SERVER_CERT_NOT_YET_VALID, since, "clock")


def test_a_coordinator_certificate_for_another_host(
    ca: CertificateAuthority, site: TlsKit, serve: Server
) -> None:
    cert = coordinator_cert(ca, hosts=("coordinator.elsewhere.example",), ips=("10.1.2.3",))
    expect(
        serve(ca, cert),
        site,
        ProblemCode.HOSTNAME_MISMATCH,
        "'127.0.0.1'",
        "coordinator.elsewhere.example, 10.1.2.3",
        "coordinator.address",
    )


def test_the_coordinator_refuses_a_site_certificate_from_another_ca(
    ca: CertificateAuthority, serve: Server
) -> None:
    forged = CertificateAuthority.create("conn-test", validity_days=1).issue(SITE, validity_days=1)
    kit = TlsKit(ca.issued.certificate_pem, forged.certificate_pem, forged.key_pem)
    expect(
        serve(ca, coordinator_cert(ca)),
        kit,
        ProblemCode.SITE_CERT_REFUSED,
        "refused this site's certificate",
        "CN=hospital-a",
        "renewed site kit",
    )


def test_the_coordinator_refuses_an_expired_site_certificate(
    ca: CertificateAuthority, serve: Server
) -> None:
    old = ca.issue(SITE, validity_days=1, now=NOW - dt.timedelta(days=10))
    kit = TlsKit(ca.issued.certificate_pem, old.certificate_pem, old.key_pem)
    until = old.certificate.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
    expect(
        serve(ca, coordinator_cert(ca)),
        kit,
        ProblemCode.SITE_CERT_EXPIRED,
        "refused this site's certificate",
        "not valid now",
        until,
        "renewed site kit",
    )


# ------------------------------------------------------------------ the agent's own certificate
def site_kit_dir(tmp_path: Path, ca: CertificateAuthority, cert: IssuedCertificate) -> Path:
    """A site kit folder with these real certificates and a provisioned site.toml."""
    (tmp_path / "ca.pem").write_bytes(ca.issued.certificate_pem)
    (tmp_path / "client.pem").write_bytes(cert.certificate_pem)
    (tmp_path / "client.key").write_bytes(cert.key_pem)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cohort.csv").write_text("time,event\n1,0\n")
    config = tmp_path / "site.toml"
    config.write_text(site_config_text("conn-test", "hospital-a", "127.0.0.1:1"))
    return config


def test_the_agent_refuses_to_start_with_an_expired_certificate(
    ca: CertificateAuthority,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from site_agent.__main__ import main

    expired = ca.issue(SITE, validity_days=1, now=NOW - dt.timedelta(days=10))
    config = site_kit_dir(tmp_path, ca, expired)
    monkeypatch.setattr(logging, "basicConfig", lambda **_: None)  # keep pytest's log capture

    assert main(["--config", str(config)]) == 2

    err = capsys.readouterr().err
    until = expired.certificate.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
    assert err.startswith("concordia-site-agent: this site's certificate expired on " + until)
    assert "renewed site kit" in err
    assert not (tmp_path / "state" / "site.sqlite").exists()  # refused before the ledger


def test_a_certificate_close_to_expiry_warns_and_one_not_yet_valid_is_refused(
    ca: CertificateAuthority,
) -> None:
    soon = ca.issue(SITE, validity_days=10).certificate
    warning = check_own_certificate(soon)
    assert warning is not None and "expires in" in warning and "CN=hospital-a" in warning
    assert check_own_certificate(ca.issue(SITE, validity_days=90).certificate) is None
    future = ca.issue(SITE, validity_days=1, now=NOW + dt.timedelta(days=3)).certificate
    with pytest.raises(CertificateNotValid, match="not valid until"):
        check_own_certificate(future)


# ------------------------------------------------------------------ the agent's log
def bare_agent(address: str, kit: TlsKit, hello: Any) -> agent_module.SiteAgent:
    """Just what the connection loop uses (no ledger, data or state): the config's address, the
    kit, and Hello/serve; serving blocks until the test ends."""
    agent = object.__new__(agent_module.SiteAgent)
    agent.config = SimpleNamespace(coordinator_address=address)  # type: ignore[assignment]
    agent.kit = kit
    agent.connected = False
    agent._reported = None
    agent._failed_attempts = 0

    async def serve_forever(stub: Any) -> None:
        await asyncio.Event().wait()

    agent._hello = hello  # type: ignore[method-assign]
    agent._serve = serve_forever  # type: ignore[method-assign]
    return agent


def test_repeated_failures_log_the_diagnosis_once_and_the_recovery(
    ca: CertificateAuthority,
    site: TlsKit,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(agent_module, "INITIAL_BACKOFF_S", 0.05)
    monkeypatch.setattr(agent_module, "MAX_BACKOFF_S", 0.1)
    diagnosed: list[ConnectionProblem | None] = []
    real = connection.diagnose

    def counting(*args: Any) -> ConnectionProblem | None:
        diagnosed.append(real(*args))
        return diagnosed[-1]

    monkeypatch.setattr(agent_module, "diagnose", counting)
    port = free_port()
    address = f"127.0.0.1:{port}"
    hellos: list[str] = []

    async def hello(stub: Any) -> None:
        reply = await stub.Hello(pb.HelloRequest(site_id="hospital-a"), timeout=TIMEOUT)
        hellos.append(reply.coordinator_id)

    async def scenario() -> None:
        loop = asyncio.create_task(bare_agent(address, site, hello)._connect_forever())
        try:
            while len(diagnosed) < 5:  # five failed attempts, all for the same reason
                await asyncio.sleep(0.05)
            cert = coordinator_cert(ca)
            kit = TlsKit(ca.issued.certificate_pem, cert.certificate_pem, cert.key_pem)
            server = grpc.aio.server(options=server_options())
            pb_grpc.add_FederationServicer_to_server(HelloServicer(), server)  # type: ignore[no-untyped-call]
            server.add_secure_port(address, server_credentials(kit))
            await server.start()
            try:
                for _ in range(200):
                    if hellos:
                        break
                    await asyncio.sleep(0.05)
            finally:
                await server.stop(grace=None)
        finally:
            loop.cancel()

    with caplog.at_level(logging.INFO, logger="concordia.site"):
        asyncio.run(asyncio.wait_for(scenario(), 60))  # a bound, should the loop not recover

    assert hellos == ["test-coordinator"]
    assert all(p is not None and p.code is ProblemCode.REFUSED for p in diagnosed[:5])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("coordinator unreachable [refused]: connection to the")
    assert address in warnings[0]
    assert "this message repeats only if the cause changes" in warnings[0]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(f"coordinator at {address} restored after" in m for m in infos), infos


class RefusingServicer(pb_grpc.FederationServicer):
    """A coordinator that refuses this site on every Hello (revoked, or an old kit)."""

    def __init__(self) -> None:
        self.hellos = 0

    async def Hello(self, request: pb.HelloRequest, context: Any) -> pb.HelloResponse:
        self.hellos += 1
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "certificate revoked")
        raise AssertionError("unreachable")


def test_a_refused_site_logs_the_refusal_once_however_often_it_retries(
    ca: CertificateAuthority,
    site: TlsKit,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(agent_module, "INITIAL_BACKOFF_S", 0.02)
    monkeypatch.setattr(agent_module, "MAX_BACKOFF_S", 0.05)
    address = f"127.0.0.1:{free_port()}"
    servicer = RefusingServicer()

    async def hello(stub: Any) -> None:
        await stub.Hello(pb.HelloRequest(site_id="hospital-a"), timeout=TIMEOUT)

    async def scenario() -> None:
        cert = coordinator_cert(ca)
        kit = TlsKit(ca.issued.certificate_pem, cert.certificate_pem, cert.key_pem)
        server = grpc.aio.server(options=server_options())
        pb_grpc.add_FederationServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
        server.add_secure_port(address, server_credentials(kit))
        await server.start()
        loop = asyncio.create_task(bare_agent(address, site, hello)._connect_forever())
        try:
            while servicer.hellos < 4:
                await asyncio.sleep(0.02)
        finally:
            loop.cancel()
            await server.stop(grace=None)

    with caplog.at_level(logging.INFO, logger="concordia.site"):
        asyncio.run(asyncio.wait_for(scenario(), 60))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert servicer.hellos >= 4
    assert errors == [
        "coordinator refused this site: certificate revoked; retrying with backoff (logged once)"
    ]
