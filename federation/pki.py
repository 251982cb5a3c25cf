"""Consortium certificate authority: ECDSA P-256 keys and X.509 certificates for every participant.

All keys are P-256 because a site's certificate key also signs its secagg key advertisements, which
the other sites verify against the consortium CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from federation.identity import Identity, IdentityError, required_eku

CLOCK_SKEW = dt.timedelta(minutes=5)
"""Certificates start this much in the past so a peer with a slightly slow clock accepts them."""


class PkiError(ValueError):
    """A CA or key file cannot be loaded or does not fit."""


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate with its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def certificate_pem(self) -> bytes:
        """The certificate as it is written into a kit and sent on the wire (PEM)."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """Unencrypted PKCS#8; protected by file mode 0600 in the kit."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A new P-256 key: the one curve every participant uses, because a site's certificate key
    also signs its secure-aggregation key advertisements, which the other sites verify."""
    return ec.generate_private_key(ec.SECP256R1())


def _utc(now: dt.datetime | None) -> dt.datetime:
    moment = now or dt.datetime.now(dt.UTC)
    if moment.tzinfo is None:
        raise PkiError("timestamps must be timezone-aware")
    return moment


class CertificateAuthority:
    """The consortium CA: issues participant certificates. Its key never leaves OUT/ca."""

    def __init__(self, issued: IssuedCertificate) -> None:
        bc = issued.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not bc.ca:
            raise PkiError("certificate is not a CA certificate")
        self.issued = issued

    @property
    def certificate(self) -> x509.Certificate:
        """The CA certificate: what every kit trusts (`ca.pem`) and the roster verifies with."""
        return self.issued.certificate

    @classmethod
    def create(
        cls, consortium: str, *, validity_days: int, now: dt.datetime | None = None
    ) -> CertificateAuthority:
        """A fresh self-signed CA (path length 0: it signs only leaf certificates)."""
        start = _utc(now) - CLOCK_SKEW
        key = generate_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, consortium),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{consortium} Concordia CA"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=validity_days) + CLOCK_SKEW)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(IssuedCertificate(cert, key))

    @classmethod
    def load(cls, certificate_pem: bytes, key_pem: bytes) -> CertificateAuthority:
        """Load an existing CA (for issuing more certificates later)."""
        try:
            cert = x509.load_pem_x509_certificate(certificate_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise PkiError(f"cannot load CA certificate/key: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError("CA key is not an ECDSA key")
        if key.public_key() != cert.public_key():
            raise PkiError("CA key does not match the CA certificate")
        return cls(IssuedCertificate(cert, key))

    def issue(
        self,
        identity: Identity,
        *,
        validity_days: int,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        now: dt.datetime | None = None,
    ) -> IssuedCertificate:
        """A leaf certificate: CN = name, URI SAN = identity, EKU by kind (server or client)."""
        if validity_days < 1:
            raise PkiError(f"validity_days must be >= 1, got {validity_days}")
        if identity.kind != "coordinator" and (dns_names or ip_addresses):
            raise IdentityError("only the coordinator certificate carries host names")
        start = _utc(now) - CLOCK_SKEW
        end = min(
            start + dt.timedelta(days=validity_days) + CLOCK_SKEW,
            self.certificate.not_valid_after_utc,
        )
        key = generate_key()
        general_names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
        general_names += [x509.DNSName(h) for h in dns_names]
        general_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([required_eku(identity.kind)]), critical=False)
            .add_extension(x509.SubjectAlternativeName(general_names), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
            .sign(self.issued.key, hashes.SHA256())
        )
        return IssuedCertificate(cert, key)


__all__ = [
    "CLOCK_SKEW",
    "CertificateAuthority",
    "IssuedCertificate",
    "PkiError",
    "generate_key",
]
