"""What can be wrong with a site's connection, in words a hospital's IT can act on: the problem
codes `site_agent.connection.diagnose` names, how a certificate is described (subject, dates),
and the start-up check of the site's own certificate — an expired one would only ever show up as
a refused handshake, so the agent refuses to start instead, and warns a month ahead.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from cryptography import x509

from federation.tls import TlsError

EXPIRY_WARNING = dt.timedelta(days=30)
"""Warn this long before the site's certificate expires: time enough to get a renewed kit."""

RENEW = (
    "ask the consortium operator for a renewed site kit (fedctl provision renew SITE) and"
    " install it"
)


class ProblemCode(enum.StrEnum):
    """What failed, stable for tests and log searches; the message says it in words."""

    BAD_ADDRESS = "bad_address"
    DNS = "dns"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    NETWORK = "network"
    NOT_TLS = "not_tls"
    UNKNOWN_CA = "unknown_ca"
    SERVER_CERT_EXPIRED = "server_cert_expired"
    SERVER_CERT_NOT_YET_VALID = "server_cert_not_yet_valid"
    CA_EXPIRED = "ca_expired"
    HOSTNAME_MISMATCH = "hostname_mismatch"
    SITE_CERT_REFUSED = "site_cert_refused"
    SITE_CERT_EXPIRED = "site_cert_expired"
    TLS_FAILED = "tls_failed"


@dataclass(frozen=True)
class ConnectionProblem:
    """One cause: equal problems are the same cause (the agent logs each cause once)."""

    code: ProblemCode
    address: str
    message: str

    def __str__(self) -> str:
        return self.message


class CertificateNotValid(TlsError):
    """The site's own certificate is expired or not yet valid: the coordinator would refuse every
    handshake, so the agent does not start (a TlsError: reported like any other kit error)."""


def describe(cert: x509.Certificate) -> str:
    """Subject and validity window, as every message quotes a certificate."""
    return (
        f"{cert.subject.rfc4514_string()}, valid {when(cert.not_valid_before_utc)}"
        f" to {when(cert.not_valid_after_utc)}"
    )


def when(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def check_own_certificate(cert: x509.Certificate, *, now: dt.datetime | None = None) -> str | None:
    """Raise CertificateNotValid if `cert` is not valid now; a warning (to log) if it expires
    within EXPIRY_WARNING; None if all is well."""
    moment = now or dt.datetime.now(dt.UTC)
    if moment > cert.not_valid_after_utc:
        raise CertificateNotValid(
            f"this site's certificate expired on {when(cert.not_valid_after_utc)}"
            f" ({describe(cert)}); the coordinator refuses expired certificates: {RENEW}"
        )
    if moment < cert.not_valid_before_utc:
        raise CertificateNotValid(
            f"this site's certificate is not valid until {when(cert.not_valid_before_utc)}"
            f" ({describe(cert)}): check this computer's clock, or {RENEW}"
        )
    left = cert.not_valid_after_utc - moment
    if left < EXPIRY_WARNING:
        return (
            f"this site's certificate expires in {left.days} days, on"
            f" {when(cert.not_valid_after_utc)} ({describe(cert)}): {RENEW} before then"
        )
    return None
