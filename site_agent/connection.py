"""Why the coordinator cannot be reached: one diagnosis a hospital's IT can act on.

gRPC reports a wrong address, a closed port, another consortium's CA, a host name missing from the
coordinator's certificate and an expired certificate on either side all as the same
`UNAVAILABLE`, without the address. `diagnose` repeats the connection step by step with the
standard library (name resolution, TCP, a TLS handshake with the site's own CA and client
certificate, exactly as the gRPC channel does) and names the first step that fails, with the
certificate subjects and dates involved and what to do. It sends no application data: the only
bytes on the wire are the TLS handshake itself.

The problem codes, the start-up check of the site's own certificate (`check_own_certificate`)
and the wording of certificates live in `site_agent/connection_problems.py`.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import tempfile
from pathlib import Path

from cryptography import x509

from site_agent.connection_problems import (
    RENEW,
    ConnectionProblem,
    ProblemCode,
    describe,
)

_PROBE_READ_S = 2.0
"""After a successful handshake, how long to wait for the server to reject our certificate: under
TLS 1.3 the server checks the client certificate after the client's side of the handshake is
done, so its alert arrives on the first read."""


def split_address(address: str) -> tuple[str, int]:
    """Host and port of a gRPC target (`host:port`, `[v6]:port`, `dns:///host:port`); the port
    defaults to 443 as gRPC's does. ValueError if the port is not a number."""
    target = address
    for prefix in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if target.startswith(prefix):
            target = target[len(prefix) :]
            break
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif target.count(":") == 1:
        host, port = target.split(":")
    else:
        host, port = target, ""
    if not host:
        raise ValueError("no host name")
    number = int(port) if port else 443
    if not 0 < number < 65536:
        raise ValueError(f"port {number} is out of range")
    return host, number


def diagnose(
    address: str,
    ca_pem: bytes,
    client_cert_pem: bytes,
    client_key_pem: bytes,
    timeout: float = 5.0,
) -> ConnectionProblem | None:
    """Find why `address` is unreachable: the first failing step as a ConnectionProblem, or None
    if name, TCP and the mutual-TLS handshake all succeed (the cause is then above TLS, e.g. a
    coordinator that is still starting). Blocking; each network step waits at most `timeout`."""

    def problem(code: ProblemCode, text: str) -> ConnectionProblem:
        return ConnectionProblem(code, address, text)

    try:
        host, port = split_address(address)
    except ValueError as exc:
        return problem(
            ProblemCode.BAD_ADDRESS,
            f"coordinator address {address!r} is not host:port ({exc}):"
            " fix coordinator.address in site.toml",
        )
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        return problem(
            ProblemCode.DNS,
            f"cannot resolve the coordinator host name {host!r} (address {address}): {exc}."
            " Check coordinator.address in site.toml for a typo, and that this computer's DNS"
            " (or the hospital proxy) resolves names outside the hospital",
        )
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        return problem(
            ProblemCode.REFUSED,
            f"connection to the coordinator at {address} was refused: nothing listens on port"
            f" {port} there. Check the port in coordinator.address, and ask the operator whether"
            " the coordinator is running",
        )
    except TimeoutError:
        return problem(
            ProblemCode.TIMEOUT,
            f"no answer from the coordinator at {address} within {timeout:g} s: a firewall"
            f" (the hospital's outbound rules for port {port}, or the coordinator's) drops the"
            " connection, or the address is wrong",
        )
    except OSError as exc:
        return problem(
            ProblemCode.NETWORK,
            f"cannot connect to the coordinator at {address}: {exc.strerror or exc}."
            " Check this computer's network route to it",
        )
    with raw:
        return _handshake(
            raw, host, port, address, ca_pem, client_cert_pem, client_key_pem, timeout
        )


def _handshake(
    raw: socket.socket,
    host: str,
    port: int,
    address: str,
    ca_pem: bytes,
    cert_pem: bytes,
    key_pem: bytes,
    timeout: float,
) -> ConnectionProblem | None:
    """The mutual-TLS handshake as the gRPC channel does it, then a short read for the server's
    verdict on our certificate (nothing is written)."""
    context = _verifying_context(ca_pem, cert_pem, key_pem)
    own = x509.load_pem_x509_certificate(cert_pem)
    try:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.settimeout(min(timeout, _PROBE_READ_S))
            try:
                data = tls.recv(1)
            except TimeoutError:
                return None  # the server is waiting for our HTTP/2 preface: TLS is fine
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
                data = b""  # closed on us (an alert instead raises SSLError, handled below)
            if data:
                return None
            # gRPC servers close without an alert when they reject a client certificate.
            return _refused(address, own, ca_pem, "it closed the connection after the handshake")
    except ssl.SSLCertVerificationError as exc:
        return _verification_problem(exc, host, port, address, ca_pem, timeout)
    except ssl.SSLError as exc:
        return _peer_problem(exc, address, own, ca_pem)
    except TimeoutError:
        return ConnectionProblem(
            ProblemCode.NOT_TLS,
            address,
            f"the service at {address} accepted the connection but did not complete a TLS"
            f" handshake within {timeout:g} s: it is not the coordinator's TLS port (check the"
            " port in coordinator.address), or a proxy in between holds the connection",
        )
    except OSError as exc:
        return ConnectionProblem(
            ProblemCode.TLS_FAILED,
            address,
            f"the coordinator at {address} dropped the connection during the TLS handshake"
            f" ({exc.strerror or exc}): a proxy or firewall that inspects TLS may be in between,"
            f" or the coordinator refused this site's certificate ({describe(own)})",
        )


def _verifying_context(ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """The site's view: trust only the consortium CA, check the host name, present our kit.
    `ssl` loads a key only from a file, so it goes through a private temporary folder that is
    removed at once."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])  # as a gRPC client offers
    context.load_verify_locations(cadata=ca_pem.decode("ascii"))
    with tempfile.TemporaryDirectory(prefix="concordia-diagnose-") as folder:  # mode 0700
        cert_file, key_file = Path(folder) / "client.pem", Path(folder) / "client.key"
        cert_file.write_bytes(cert_pem)
        key_file.touch(mode=0o600)
        key_file.write_bytes(key_pem)
        context.load_cert_chain(cert_file, key_file)
    return context


def _verification_problem(
    exc: ssl.SSLCertVerificationError,
    host: str,
    port: int,
    address: str,
    ca_pem: bytes,
    timeout: float,
) -> ConnectionProblem:
    """Our side refused the server's certificate: say which check failed, about which cert."""
    server = _read_server_certificate(host, port, timeout)
    ca = x509.load_pem_x509_certificate(ca_pem)
    shown = describe(server) if server is not None else "its certificate could not be read"
    code = exc.verify_code
    if code in (9, 10) and server is not None and _valid_now(server):
        # The leaf is in date, so the out-of-date certificate is the CA copy in our kit.
        return ConnectionProblem(
            ProblemCode.CA_EXPIRED,
            address,
            f"the consortium CA certificate in this site's kit is not valid now ({describe(ca)}),"
            f" so the coordinator at {address} cannot be verified: {RENEW}",
        )
    if code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
        return ConnectionProblem(
            ProblemCode.SERVER_CERT_EXPIRED,
            address,
            f"the coordinator at {address} presents an expired certificate ({shown}): the"
            " consortium operator must renew the coordinator's certificate; nothing to change"
            " at the site (if the dates look right, check this computer's clock)",
        )
    if code == 9:  # X509_V_ERR_CERT_NOT_YET_VALID
        return ConnectionProblem(
            ProblemCode.SERVER_CERT_NOT_YET_VALID,
            address,
            f"the coordinator at {address} presents a certificate that is not valid yet"
            f" ({shown}): check this computer's clock (and the coordinator's)",
        )
    if code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
        names = ", ".join(_host_names(server)) if server is not None else "unknown"
        return ConnectionProblem(
            ProblemCode.HOSTNAME_MISMATCH,
            address,
            f"the coordinator's certificate at {address} is not for {host!r}: it holds the names"
            f" {names} ({shown}). Set coordinator.address in site.toml to one of those names, or"
            " ask the operator to re-issue the coordinator certificate with this name",
        )
    if code in (2, 18, 19, 20, 21, 7):  # no issuer / self-signed / untrusted / bad signature
        issuer = server.issuer.rfc4514_string() if server is not None else "unknown"
        return ConnectionProblem(
            ProblemCode.UNKNOWN_CA,
            address,
            f"the server at {address} is not this consortium's coordinator: its certificate"
            f" ({shown}; issued by {issuer}) does not verify against this site's CA"
            f" ({ca.subject.rfc4514_string()}). Check coordinator.address (another consortium's"
            " coordinator, or a TLS-inspecting proxy in between?) and that ca.pem is from this"
            " consortium's kit",
        )
    return ConnectionProblem(
        ProblemCode.TLS_FAILED,
        address,
        f"the coordinator's certificate at {address} failed verification:"
        f" {exc.verify_message} ({shown})",
    )


_REFUSAL_ALERTS = {
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "it says the certificate has expired",
    "TLSV1_ALERT_UNKNOWN_CA": "it does not trust the CA that issued it",
    "SSLV3_ALERT_BAD_CERTIFICATE": "it rejected the certificate",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "it says the certificate is revoked",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "it does not accept the certificate",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "it does not support the certificate",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "it received no certificate from this site",
    "TLSV1_ALERT_ACCESS_DENIED": "it denied access",
}


def _peer_problem(
    exc: ssl.SSLError, address: str, own: x509.Certificate, ca_pem: bytes
) -> ConnectionProblem:
    """The handshake failed on the server's side, or it is not TLS at all."""
    reason = exc.reason or ""
    if reason in _REFUSAL_ALERTS:
        return _refused(address, own, ca_pem, _REFUSAL_ALERTS[reason])
    if reason in (
        "WRONG_VERSION_NUMBER",
        "HTTP_REQUEST",
        "UNKNOWN_PROTOCOL",
        "RECORD_LAYER_FAILURE",
    ):
        return ConnectionProblem(
            ProblemCode.NOT_TLS,
            address,
            f"the service at {address} does not speak TLS ({reason}): it is not the"
            " coordinator's port; check the port in coordinator.address",
        )
    return ConnectionProblem(
        ProblemCode.TLS_FAILED,
        address,
        f"the TLS handshake with the coordinator at {address} failed: {reason or exc}",
    )


def _refused(address: str, own: x509.Certificate, ca_pem: bytes, said: str) -> ConnectionProblem:
    """The coordinator refused our certificate: say what is wrong with it if we can see it
    (expired, or not from our own CA), else that it is revoked or unknown there."""
    head = f"the coordinator at {address} refused this site's certificate ({describe(own)}; {said})"
    if not _valid_now(own):
        return ConnectionProblem(
            ProblemCode.SITE_CERT_EXPIRED, address, f"{head}: it is not valid now: {RENEW}"
        )
    ca = x509.load_pem_x509_certificate(ca_pem)
    try:
        own.verify_directly_issued_by(ca)
    except Exception:  # ValueError, TypeError or InvalidSignature, depending on the flaw
        same = " (same name, another key: a re-created CA)" if own.issuer == ca.subject else ""
        return ConnectionProblem(
            ProblemCode.SITE_CERT_REFUSED,
            address,
            f"{head}: it was issued by {own.issuer.rfc4514_string()}, not by this kit's CA"
            f" ({ca.subject.rfc4514_string()}){same}; client.pem is from another kit: {RENEW}",
        )
    return ConnectionProblem(
        ProblemCode.SITE_CERT_REFUSED,
        address,
        f"{head}: it may be revoked, or the coordinator trusts another CA: {RENEW}",
    )


def _read_server_certificate(host: str, port: int, timeout: float) -> x509.Certificate | None:
    """The server's certificate, for the message only: a second handshake without verification
    and without our client certificate, closed as soon as the certificate has arrived (nothing
    is sent; the certificate is never trusted)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    if not der:
        return None
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        return None


def _valid_now(cert: x509.Certificate) -> bool:
    now = dt.datetime.now(dt.UTC)
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _host_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for (the CN if it has no SAN)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    names = list(san.get_values_for_type(x509.DNSName))
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names or ["none"]
