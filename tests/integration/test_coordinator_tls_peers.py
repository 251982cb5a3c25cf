"""The coordinator names the peer in every TLS failure it can attribute, on a real process.

A real coordinator (`python -m coordinator`, provisioned kits) is dialled by clients holding
certificates made here as `fedctl provision` makes them (another consortium's CA, this CA with
dates moved into the past or future, no certificate, not TLS at all). Each failure class must
give its own coordinator log line naming the client's address (its exact ephemeral port) and the
cause; a CA-valid certificate that is not on the signed roster is refused after the handshake
with a line naming its subject and fingerprint. The one class the server cannot tell apart (the
client rejects the *coordinator's* certificate) must say exactly that.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.handshake_log import FailureKind, HandshakeFailure, RecordReader
from fedctl.localfed import LocalFederation
from federation.identity import Identity
from federation.pki import CertificateAuthority, IssuedCertificate
from federation.roster import certificate_fingerprint
from federation.tls import TlsKit, TransportSettings, secure_channel
from federation.wire.v1 import federation_pb2 as pb
from federation.wire.v1 import federation_pb2_grpc as pb_grpc
from tests.integration.coordinator_process import coordinator_only

pytestmark = pytest.mark.integration

SITE = Identity("site", "hospital-a")
NOW = dt.datetime.now(dt.UTC)
LOG_WAIT_S = 30.0


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with coordinator_only(tmp_path_factory.mktemp("tls-peers") / "fed") as federation:
        yield federation


@pytest.fixture(scope="module")
def ca(fed: LocalFederation) -> CertificateAuthority:
    ca_dir = fed.kits / "ca"
    return CertificateAuthority.load(
        (ca_dir / "ca.pem").read_bytes(), (ca_dir / "ca.key").read_bytes()
    )


def dial(
    fed: LocalFederation,
    tmp_path: Path,
    trust: bytes,
    cert: IssuedCertificate | None = None,
) -> str:
    """One TLS handshake to the coordinator (stdlib ssl, as `site_agent.connection` probes it);
    the client's own `ip:port`, which the coordinator's line must name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # the server's name is not what these cases are about
    (tmp_path / "trust.pem").write_bytes(trust)
    context.load_verify_locations(str(tmp_path / "trust.pem"))
    if cert is not None:
        (tmp_path / "c.pem").write_bytes(cert.certificate_pem)
        (tmp_path / "c.key").write_bytes(cert.key_pem)
        context.load_cert_chain(str(tmp_path / "c.pem"), str(tmp_path / "c.key"))
    with socket.create_connection(("127.0.0.1", fed.port), timeout=5) as raw:
        host, port = raw.getsockname()[:2]
        try:
            with context.wrap_socket(raw) as tls:
                tls.recv(1)  # TLS 1.3: the server's verdict on our certificate comes on a read
        except (ssl.SSLError, OSError):
            pass  # the handshake is meant to fail; what the coordinator logs is the test
    return f"{host}:{port}"


def coordinator_line(fed: LocalFederation, needle: str) -> str:
    """The coordinator log line containing `needle` (waits for the log to be written)."""
    import time

    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        for line in fed.log_text("coordinator").splitlines():
            if needle in line:
                return line
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no coordinator line with {needle!r}:\n{fed.log_text('coordinator')[-3000:]}"
            )
        time.sleep(0.1)


def expect(fed: LocalFederation, peer: str, kind: FailureKind, *words: str) -> str:
    line = coordinator_line(fed, f"TLS handshake from {peer} refused [{kind}]")
    for word in words:
        assert word in line, line
    return line


def test_a_client_certificate_from_another_consortium(
    fed: LocalFederation, ca: CertificateAuthority, tmp_path: Path
) -> None:
    other = CertificateAuthority.create("other-consortium", validity_days=30)
    peer = dial(fed, tmp_path, ca.issued.certificate_pem, other.issue(SITE, validity_days=1))
    expect(fed, peer, FailureKind.UNKNOWN_CA, "not from this consortium's CA")


def test_an_expired_client_certificate(
    fed: LocalFederation, ca: CertificateAuthority, tmp_path: Path
) -> None:
    old = ca.issue(SITE, validity_days=1, now=NOW - dt.timedelta(days=10))
    peer = dial(fed, tmp_path, ca.issued.certificate_pem, old)
    expect(fed, peer, FailureKind.CLIENT_CERT_EXPIRED, "expired", "fedctl provision renew")


def test_a_client_certificate_not_yet_valid(
    fed: LocalFederation, ca: CertificateAuthority, tmp_path: Path
) -> None:
    future = ca.issue(SITE, validity_days=1, now=NOW + dt.timedelta(days=10))
    peer = dial(fed, tmp_path, ca.issued.certificate_pem, future)
    expect(fed, peer, FailureKind.CLIENT_CERT_NOT_YET_VALID, "clock")


def test_a_client_without_a_certificate(
    fed: LocalFederation, ca: CertificateAuthority, tmp_path: Path
) -> None:
    peer = dial(fed, tmp_path, ca.issued.certificate_pem)
    expect(fed, peer, FailureKind.NO_CLIENT_CERT, "no client certificate")


def test_a_client_that_rejects_the_coordinator_certificate_is_named_but_not_diagnosed(
    fed: LocalFederation, ca: CertificateAuthority, tmp_path: Path
) -> None:
    """The site distrusts the coordinator (it holds another consortium's CA): the coordinator
    only sees the connection end, and says so instead of guessing."""
    other = CertificateAuthority.create("other-consortium", validity_days=30)
    peer = dial(fed, tmp_path, other.issued.certificate_pem, ca.issue(SITE, validity_days=1))
    expect(fed, peer, FailureKind.PEER_ENDED, "site agent's log")


def test_a_client_that_does_not_speak_tls(fed: LocalFederation) -> None:
    with socket.create_connection(("127.0.0.1", fed.port), timeout=5) as raw:
        host, port = raw.getsockname()[:2]
        raw.sendall(b"GET / HTTP/1.1\r\nHost: coordinator\r\n\r\n")
        raw.settimeout(5)
        with contextlib.suppress(OSError):  # the coordinator may just close it
            raw.recv(1)
    expect(fed, f"{host}:{port}", FailureKind.NOT_TLS, "does not speak TLS")


def test_each_class_has_its_own_line(fed: LocalFederation) -> None:
    """Run after the cases above (file order): no two classes share a message."""
    lines = [line for line in fed.log_text("coordinator").splitlines() if "TLS handshake" in line]
    messages = {line.split("refused [", 1)[1] for line in lines}
    kinds = {message.split("]", 1)[0] for message in messages}
    assert len(kinds) >= 6, lines
    assert len({message.split("]: ", 1)[1] for message in messages}) == len(kinds)


def test_a_certificate_of_this_ca_not_on_the_roster_is_refused_by_subject_and_fingerprint(
    fed: LocalFederation, ca: CertificateAuthority
) -> None:
    rogue = ca.issue(SITE, validity_days=1)  # CA-signed, so the handshake succeeds
    kit = TlsKit(ca.issued.certificate_pem, rogue.certificate_pem, rogue.key_pem)
    channel = secure_channel(f"localhost:{fed.port}", kit, TransportSettings())
    stub = pb_grpc.FederationStub(channel)  # type: ignore[no-untyped-call]
    with pytest.raises(grpc.RpcError) as refused:
        stub.Hello(pb.HelloRequest(site_id="hospital-a"), timeout=10)
    channel.close()
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    fingerprint = certificate_fingerprint(rogue.certificate)[:16]
    line = coordinator_line(fed, f"sha256 {fingerprint}")
    assert "CN=hospital-a" in line and "calling Hello" in line, line
    assert "not on the consortium roster" in line and "127.0.0.1:" in line, line
    assert "Traceback" not in fed.log_text("coordinator")


# ------------------------------------------------------------------ the record reader, alone
CORE_RECORDS = (Path(__file__).parent / "grpc_handshake_records.txt").read_text()
"""One failed handshake as grpcio 1.85's core logged it with GRPC_TRACE=handshaker (recorded from
a real server; argument lists shortened), then a WARNING nobody switched on."""


def read(chunks: list[str], drop_info: bool = True) -> tuple[list[HandshakeFailure], str]:
    failures: list[HandshakeFailure] = []
    forwarded: list[str] = []
    reader = RecordReader(failures.append, forwarded.append, drop_info=drop_info)
    for chunk in chunks:
        reader.feed(chunk)
    reader.flush()
    return failures, "".join(forwarded)


def test_a_failure_record_becomes_one_failure_and_the_tracer_chatter_is_dropped() -> None:
    failures, forwarded = read([CORE_RECORDS])
    assert [(f.peer, f.kind) for f in failures] == [
        ("127.0.0.1:55006", FailureKind.CLIENT_CERT_NOT_YET_VALID)
    ]
    assert forwarded.strip() == CORE_RECORDS.strip().splitlines()[-1]  # only the WARNING
    _, everything = read([CORE_RECORDS], drop_info=False)
    assert everything.count("CallNextHandshakerLocked") == CORE_RECORDS.count(
        "CallNextHandshakerLocked"
    )


@given(st.lists(st.integers(min_value=0, max_value=len(CORE_RECORDS)), max_size=12))
def test_how_the_pipe_splits_the_stream_does_not_matter(cuts: list[int]) -> None:
    """The pipe hands over arbitrary chunks: any split gives the same failures and output."""
    points = sorted(set(cuts))
    chunks = [
        CORE_RECORDS[a:b] for a, b in zip([0, *points], [*points, len(CORE_RECORDS)], strict=True)
    ]
    assert read(chunks) == read([CORE_RECORDS])
