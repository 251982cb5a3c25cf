"""Who a certificate belongs to: identities encoded as `urn:concordia:` URI SANs, and their checks.

The coordinator maps every mTLS peer to an Identity to authorise RPCs; sites use
`verify_peer_certificate` to check each other's secagg signing certificates against the consortium
CA, so a coordinator that substitutes keys is caught.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

IdentityKind = Literal["site", "operator", "coordinator"]
OperatorRole = Literal["admin", "viewer"]

URI_PREFIX = "urn:concordia:"
# Site and operator names: [a-z0-9-]{2,40} without a leading "-" (safe as a CLI argument);
# the same rule as the RunPlan's site ids.
NAME_PATTERN = r"[a-z0-9][a-z0-9-]{1,39}"
COORDINATOR_NAME = "coordinator"
_NAME_RE = re.compile(rf"^{NAME_PATTERN}$")
_ROLES: tuple[OperatorRole, ...] = ("admin", "viewer")


class IdentityError(ValueError):
    """A certificate does not carry a valid Concordia identity or fails verification."""


@dataclass(frozen=True)
class Identity:
    """A consortium participant: a site, an operator (with a role) or the coordinator."""

    kind: IdentityKind
    name: str
    role: OperatorRole | None = None

    def __post_init__(self) -> None:
        if self.kind == "coordinator":
            if self.name != COORDINATOR_NAME or self.role is not None:
                raise IdentityError(f"coordinator identity must be {COORDINATOR_NAME!r}, no role")
            return
        if not _NAME_RE.match(self.name):
            raise IdentityError(f"{self.kind} name {self.name!r} must match {NAME_PATTERN}")
        if self.kind == "site" and self.role is not None:
            raise IdentityError("a site identity has no role")
        if self.kind == "operator" and self.role not in _ROLES:
            raise IdentityError(f"operator role must be one of {_ROLES}, got {self.role!r}")

    @property
    def uri(self) -> str:
        """The URI SAN that encodes this identity in a certificate."""
        if self.kind == "coordinator":
            return f"{URI_PREFIX}coordinator"
        if self.kind == "site":
            return f"{URI_PREFIX}site:{self.name}"
        return f"{URI_PREFIX}operator:{self.name}:{self.role}"

    @classmethod
    def from_uri(cls, uri: str) -> Identity:
        """Parse `urn:concordia:site:<id>`, `…:operator:<name>:<role>` or `…:coordinator`."""
        if not uri.startswith(URI_PREFIX):
            raise IdentityError(f"not a Concordia identity URI: {uri!r}")
        parts = uri[len(URI_PREFIX) :].split(":")
        if parts == ["coordinator"]:
            return cls("coordinator", COORDINATOR_NAME)
        if len(parts) == 2 and parts[0] == "site":
            return cls("site", parts[1])
        if len(parts) == 3 and parts[0] == "operator":
            role = parts[2]
            if role not in _ROLES:
                raise IdentityError(f"unknown operator role {role!r} in {uri!r}")
            return cls("operator", parts[1], "admin" if role == "admin" else "viewer")
        raise IdentityError(f"malformed Concordia identity URI: {uri!r}")

    def __str__(self) -> str:
        return self.uri


def identity_from_certificate(cert: x509.Certificate) -> Identity:
    """The identity in a certificate: exactly one `urn:concordia:` URI SAN, matching the CN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise IdentityError("certificate has no subjectAltName, so no Concordia identity") from exc
    uris = [
        u
        for u in san.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith(URI_PREFIX)
    ]
    if len(uris) != 1:
        raise IdentityError(
            f"certificate must carry exactly one {URI_PREFIX} URI, found {len(uris)}"
        )
    identity = Identity.from_uri(uris[0])
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = cns[0].value if len(cns) == 1 else None
    if cn != identity.name:
        raise IdentityError(f"certificate CN {cn!r} does not match its identity {identity.uri}")
    return identity


def load_certificate(pem: bytes | str) -> x509.Certificate:
    """Parse one PEM certificate, with a typed error instead of a bare ValueError."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise IdentityError(f"not a PEM certificate: {exc}") from exc


def required_eku(kind: IdentityKind) -> x509.ObjectIdentifier:
    """Sites and operators are TLS clients; the coordinator is the TLS server."""
    return (
        ExtendedKeyUsageOID.SERVER_AUTH
        if kind == "coordinator"
        else ExtendedKeyUsageOID.CLIENT_AUTH
    )


def verify_peer_certificate(
    pem: bytes | str,
    ca_cert: x509.Certificate,
    *,
    expected_kind: IdentityKind | None = None,
    now: dt.datetime | None = None,
) -> Identity:
    """Check a peer certificate was issued by the CA, is valid now, has the right EKU; its Identity.

    Used by sites on the certificates that travel with a secagg session: a signature on a key
    advertisement counts only if this passes for the claimed site.
    """
    cert = load_certificate(pem)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except Exception as exc:  # ValueError, TypeError or InvalidSignature, depending on the flaw
        raise IdentityError(f"certificate was not issued by the consortium CA: {exc}") from exc
    moment = now or dt.datetime.now(dt.UTC)
    if moment < cert.not_valid_before_utc or moment > cert.not_valid_after_utc:
        raise IdentityError(
            f"certificate is not valid at {moment.isoformat()} (valid "
            f"{cert.not_valid_before_utc.isoformat()} to {cert.not_valid_after_utc.isoformat()})"
        )
    if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
        raise IdentityError("certificate key is not an ECDSA key")
    identity = identity_from_certificate(cert)
    if expected_kind is not None and identity.kind != expected_kind:
        raise IdentityError(f"expected a {expected_kind} certificate, got {identity.uri}")
    try:
        ekus = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise IdentityError("certificate has no extendedKeyUsage") from exc
    wanted = required_eku(identity.kind)
    if wanted not in ekus:
        raise IdentityError(f"{identity.uri} certificate lacks the {wanted._name} key usage")
    return identity
