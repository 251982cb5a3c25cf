"""Identities in certificates, and the checks sites run on each other's certificates."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from federation.identity import (
    Identity,
    IdentityError,
    identity_from_certificate,
    verify_peer_certificate,
)
from federation.pki import CertificateAuthority, generate_key

pytestmark = pytest.mark.unit

NOW = dt.datetime(2030, 6, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("test", validity_days=365, now=NOW)


@pytest.mark.parametrize(
    ("identity", "uri"),
    [
        (Identity("site", "hospital-a"), "urn:concordia:site:hospital-a"),
        (Identity("operator", "alice", "viewer"), "urn:concordia:operator:alice:viewer"),
        (Identity("coordinator", "coordinator"), "urn:concordia:coordinator"),
    ],
)
def test_identity_uri_round_trip(identity: Identity, uri: str) -> None:
    assert identity.uri == uri
    assert Identity.from_uri(uri) == identity


@pytest.mark.parametrize(
    "uri",
    [
        "urn:other:site:a1",
        "urn:concordia:site:A1",
        "urn:concordia:site:a1:extra",
        "urn:concordia:operator:alice:root",
        "urn:concordia:operator:alice",
        "urn:concordia:site:-lead",
    ],
)
def test_malformed_uris_are_rejected(uri: str) -> None:
    with pytest.raises(IdentityError):
        Identity.from_uri(uri)


def test_issued_certificates_carry_their_identity(ca: CertificateAuthority) -> None:
    for identity in (Identity("site", "a1"), Identity("operator", "bob", "admin")):
        issued = ca.issue(identity, validity_days=30, now=NOW)
        assert identity_from_certificate(issued.certificate) == identity
        assert verify_peer_certificate(issued.certificate_pem, ca.certificate, now=NOW) == identity


def _raw_cert(ca: CertificateAuthority, cn: str, uris: list[str]) -> x509.Certificate:
    key = generate_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
    )
    if uris:
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(ca.issued.key, hashes.SHA256())


def test_certificate_without_exactly_one_concordia_uri_is_rejected(
    ca: CertificateAuthority,
) -> None:
    with pytest.raises(IdentityError, match="no subjectAltName"):
        identity_from_certificate(_raw_cert(ca, "a1", []))
    with pytest.raises(IdentityError, match="exactly one"):
        identity_from_certificate(_raw_cert(ca, "a1", ["https://example.org"]))
    two = ["urn:concordia:site:a1", "urn:concordia:site:b2"]
    with pytest.raises(IdentityError, match="exactly one"):
        identity_from_certificate(_raw_cert(ca, "a1", two))


def test_cn_must_match_the_identity(ca: CertificateAuthority) -> None:
    with pytest.raises(IdentityError, match="does not match"):
        identity_from_certificate(_raw_cert(ca, "b2", ["urn:concordia:site:a1"]))


def test_certificate_from_another_ca_is_rejected(ca: CertificateAuthority) -> None:
    other = CertificateAuthority.create("test", validity_days=365, now=NOW)
    forged = other.issue(Identity("site", "a1"), validity_days=30, now=NOW)
    with pytest.raises(IdentityError, match="not issued by the consortium CA"):
        verify_peer_certificate(forged.certificate_pem, ca.certificate, now=NOW)


def test_expired_and_not_yet_valid_certificates_are_rejected(ca: CertificateAuthority) -> None:
    issued = ca.issue(Identity("site", "a1"), validity_days=30, now=NOW)
    pem = issued.certificate_pem
    assert verify_peer_certificate(pem, ca.certificate, now=NOW + dt.timedelta(days=29))
    with pytest.raises(IdentityError, match="not valid at"):
        verify_peer_certificate(pem, ca.certificate, now=NOW + dt.timedelta(days=31))
    with pytest.raises(IdentityError, match="not valid at"):
        verify_peer_certificate(pem, ca.certificate, now=NOW - dt.timedelta(days=1))


def test_wrong_eku_is_rejected(ca: CertificateAuthority) -> None:
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a1")]))
        .issuer_name(ca.certificate.subject)
        .public_key(generate_key().public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("urn:concordia:site:a1")]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca.issued.key, hashes.SHA256())
    )
    with pytest.raises(IdentityError, match="key usage"):
        verify_peer_certificate(cert.public_bytes(Encoding.PEM), ca.certificate, now=NOW)


def test_expected_kind_is_enforced(ca: CertificateAuthority) -> None:
    operator = ca.issue(Identity("operator", "alice", "admin"), validity_days=30, now=NOW)
    with pytest.raises(IdentityError, match="expected a site"):
        verify_peer_certificate(
            operator.certificate_pem, ca.certificate, expected_kind="site", now=NOW
        )


def test_garbage_pem_is_a_typed_error(ca: CertificateAuthority) -> None:
    with pytest.raises(IdentityError, match="not a PEM certificate"):
        verify_peer_certificate(b"-----BEGIN CERTIFICATE-----\nnope\n", ca.certificate)
