"""Mutual TLS over real loopback gRPC with the generated stubs and a tiny test servicer.

This exercises the TLS/identity layer only (the coordinator is not involved): who reaches the
servicer, with which identity, and which connections never get past the handshake.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import pytest

from federation.consortium import parse_consortium
from federation.identity import Identity
from federation.pki import CertificateAuthority
from federation.provisioning import provision
from federation.tls import (
    MIB,
    TlsKit,
    TransportSettings,
    aio_secure_channel,
    channel_credentials,
    channel_options,
    peer_identity,
    secure_channel,
    server_credentials,
    server_options,
)
from federation.wire.v1 import federation_pb2 as pb
from federation.wire.v1 import federation_pb2_grpc as pb_grpc
from site_agent import serve_loop

pytestmark = pytest.mark.integration

ONE_MILLION = 1_000_000
RPC_TIMEOUT = 10.0


class EchoIdentityServicer(pb_grpc.FederationServicer):
    """Answers with what the TLS layer says about the caller."""

    def Hello(self, request: pb.HelloRequest, context: grpc.ServicerContext) -> pb.HelloResponse:
        identity = peer_identity(context)
        return pb.HelloResponse(coordinator_id=identity.uri if identity else "<none>")

    def PullTask(self, request: pb.PullTaskRequest, context: grpc.ServicerContext) -> pb.Task:
        vector = b"\x00\x00\x80\x3f" * ONE_MILLION  # 1M float32 ones, little-endian
        return pb.Task(
            task_id="t-1",
            kind=pb.TASK_KIND_TRAIN,
            train=pb.TrainTask(
                global_vector=pb.GlobalVector(
                    float32_le=vector,
                    length=ONE_MILLION,
                    sha256=hashlib.sha256(vector).hexdigest(),
                )
            ),
        )

    def PushResult(self, request: pb.TaskResult, context: grpc.ServicerContext) -> pb.PushAck:
        return pb.PushAck(task_id=f"{request.task_id}:{len(request.payload)}")


class AioEchoIdentityServicer(pb_grpc.FederationServicer):
    async def Hello(
        self, request: pb.HelloRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.HelloResponse:
        identity = peer_identity(context)
        return pb.HelloResponse(coordinator_id=identity.uri if identity else "<none>")


def _stub(channel: grpc.Channel | grpc.aio.Channel) -> Any:
    """The generated *_pb2_grpc module is untyped; keep that to one place."""
    return pb_grpc.FederationStub(channel)  # type: ignore[no-untyped-call]


def _add_servicer(servicer: pb_grpc.FederationServicer, server: Any) -> None:
    pb_grpc.add_FederationServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Kits:
    coordinator: TlsKit
    site: TlsKit
    operator: TlsKit
    foreign_site: TlsKit  # trusts our CA, but its own certificate comes from another CA


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Kits:
    out = tmp_path_factory.mktemp("mtls")
    config = parse_consortium(
        {
            "consortium": {"name": "mtls-test"},
            "coordinator": {"hosts": ["localhost", "127.0.0.1"], "port": 1},
            "sites": ["hospital-a"],
            "operators": [{"name": "alice", "role": "viewer"}],
        }
    )
    result = provision(config, out / "kits")
    site = TlsKit.from_kit_dir(result.site_dirs["hospital-a"])
    other_ca = CertificateAuthority.create("mtls-test", validity_days=1)
    forged = other_ca.issue(Identity("site", "hospital-a"), validity_days=1)
    return Kits(
        coordinator=TlsKit.from_kit_dir(result.coordinator_dir),
        site=site,
        operator=TlsKit.from_kit_dir(result.operator_dirs["alice"]),
        foreign_site=TlsKit(site.ca_pem, forged.certificate_pem, forged.key_pem),
    )


def _start_server(
    kit: TlsKit, settings: TransportSettings | None = None
) -> tuple[grpc.Server, str]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2), options=server_options(settings)
    )
    _add_servicer(EchoIdentityServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(kit))
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def address(kits: Kits) -> Iterator[str]:
    server, addr = _start_server(kits.coordinator)
    yield addr
    server.stop(grace=None)


def test_site_certificate_reaches_servicer_with_its_identity(kits: Kits, address: str) -> None:
    with secure_channel(address, kits.site) as channel:
        reply = _stub(channel).Hello(pb.HelloRequest(site_id="hospital-a"), timeout=RPC_TIMEOUT)
    assert reply.coordinator_id == "urn:concordia:site:hospital-a"


def test_no_client_certificate_fails_the_handshake(kits: Kits, address: str) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=kits.site.ca_pem)
    channel = grpc.secure_channel(address, credentials, options=channel_options())
    with channel, pytest.raises(grpc.RpcError) as err:
        _stub(channel).Hello(pb.HelloRequest(), timeout=RPC_TIMEOUT)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_certificate_from_another_ca_fails(kits: Kits, address: str) -> None:
    channel = secure_channel(address, kits.foreign_site)
    with channel, pytest.raises(grpc.RpcError) as err:
        _stub(channel).Hello(pb.HelloRequest(), timeout=RPC_TIMEOUT)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_server_from_another_ca_is_not_trusted(kits: Kits) -> None:
    impostor_ca = CertificateAuthority.create("impostor", validity_days=1)
    impostor = impostor_ca.issue(
        Identity("coordinator", "coordinator"), validity_days=1, ip_addresses=["127.0.0.1"]
    )
    impostor_kit = TlsKit(
        impostor_ca.issued.certificate_pem, impostor.certificate_pem, impostor.key_pem
    )
    server, addr = _start_server(impostor_kit)
    try:
        channel = secure_channel(addr, kits.site)
        with channel, pytest.raises(grpc.RpcError) as err:
            _stub(channel).Hello(pb.HelloRequest(), timeout=RPC_TIMEOUT)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(grace=None)


def test_one_million_parameters_fit_both_ways_with_defaults(kits: Kits, address: str) -> None:
    with secure_channel(address, kits.site) as channel:
        stub = _stub(channel)
        task = stub.PullTask(pb.PullTaskRequest(wait_ms=0), timeout=RPC_TIMEOUT)
        assert task.train.global_vector.length == ONE_MILLION
        assert len(task.train.global_vector.float32_le) == 4 * ONE_MILLION
        masked = bytes(4 * ONE_MILLION)  # a masked input is one uint32 per parameter
        ack = stub.PushResult(pb.TaskResult(task_id="t-1", payload=masked), timeout=RPC_TIMEOUT)
    assert ack.task_id == f"t-1:{4 * ONE_MILLION}"


def test_oversized_message_is_resource_exhausted(kits: Kits) -> None:
    server, addr = _start_server(kits.coordinator, TransportSettings(max_message_bytes=1 * MIB))
    try:
        with secure_channel(addr, kits.site) as channel:  # client limit: the 64 MiB default
            stub = _stub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.PushResult(pb.TaskResult(payload=bytes(2 * MIB)), timeout=RPC_TIMEOUT)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # Small messages still go through on the same server.
            ack = stub.PushResult(pb.TaskResult(task_id="ok"), timeout=RPC_TIMEOUT)
            assert ack.task_id == "ok:0"
    finally:
        server.stop(grace=None)


def test_peer_identity_in_an_asyncio_servicer(kits: Kits) -> None:
    async def scenario() -> str:
        server = grpc.aio.server(options=server_options())
        _add_servicer(AioEchoIdentityServicer(), server)
        port = server.add_secure_port("127.0.0.1:0", server_credentials(kits.coordinator))
        await server.start()
        try:
            async with aio_secure_channel(f"127.0.0.1:{port}", kits.operator) as channel:
                reply = await _stub(channel).Hello(pb.HelloRequest(), timeout=RPC_TIMEOUT)
                return str(reply.coordinator_id)
        finally:
            await server.stop(grace=None)

    assert asyncio.run(scenario()) == "urn:concordia:operator:alice:viewer"


def test_channel_credentials_build_from_a_kit(kits: Kits) -> None:
    assert isinstance(channel_credentials(kits.site), grpc.ChannelCredentials)
    assert kits.coordinator.certificate.not_valid_after_utc > dt.datetime.now(dt.UTC)


class _EnoughServed(Exception):
    """Raised by the fake site's handler to end the serve loop."""


class _CountingSite:
    """What the serve loop uses of a SiteAgent; the third task ends the loop."""

    site_id = "hospital-a"
    poll_wait_ms = 0
    last_task: str | None = None
    roster: Any = None
    peer_certificates: Any = None

    def __init__(self) -> None:
        self.handled = 0

    def handle(self, task: pb.Task) -> pb.TaskResult:
        self.handled += 1
        if self.handled == 3:
            raise _EnoughServed
        return pb.TaskResult(task_id=task.task_id, kind=task.kind)


class _RecordingStub:
    """The real stub, recording each call's method and status code."""

    def __init__(self, stub: Any) -> None:
        self.stub = stub
        self.calls: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.stub, name)

        async def call(request: Any) -> Any:
            try:
                reply = await method(request, timeout=RPC_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                self.calls.append((name, exc.code().name))
                raise
            self.calls.append((name, "OK"))
            return reply

        return call


def test_a_coordinator_without_push_and_pull_is_served_by_push_result(
    kits: Kits, address: str
) -> None:
    """EchoIdentityServicer predates PushAndPull: gRPC itself answers UNIMPLEMENTED, and the
    site's loop re-sends the result with PushResult and stays with PushResult + PullTask."""

    async def scenario() -> list[tuple[str, str]]:
        async with aio_secure_channel(address, kits.site) as channel:
            stub = _RecordingStub(_stub(channel))

            async def no_hello() -> None:
                raise AssertionError("no session here")

            with pytest.raises(_EnoughServed):
                await serve_loop.serve(_CountingSite(), stub, no_hello)  # type: ignore[arg-type]
            return stub.calls

    assert asyncio.run(scenario()) == [
        ("PullTask", "OK"),
        ("PushAndPull", "UNIMPLEMENTED"),
        ("PushResult", "OK"),  # the same result again
        ("PullTask", "OK"),
        ("PushResult", "OK"),  # no second PushAndPull on this connection
        ("PullTask", "OK"),
    ]
