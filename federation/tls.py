"""Mutual-TLS plumbing for gRPC: kits, credentials, channel/server options, peer identity.

Every Concordia connection is mutual TLS against the consortium CA. Sites only dial out and hold
long-poll calls open across hospital VPNs and NATs, so keepalive pings are frequent enough to keep
idle-connection timers from dropping them, and the server is told to accept those pings.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from federation.identity import (
    Identity,
    IdentityError,
    identity_from_certificate,
    load_certificate,
)
from federation.provisioning import (
    CA_CERT,
    CLIENT_CERT,
    CLIENT_KEY,
    COORDINATOR_CONFIG,
    OPERATOR_CONFIG,
    SERVER_CERT,
    SERVER_KEY,
    SITE_CONFIG,
)

MIB = 1024 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 64 * MIB
"""A 1M-parameter float32 vector is 4 MiB; masked inputs are the same size. 64 MiB leaves room."""

PEER_CERT_KEY = "x509_pem_cert"


class TlsError(ValueError):
    """A TLS kit is missing, unreadable or inconsistent (key does not match certificate)."""


@dataclass(frozen=True)
class TransportSettings:
    """Message size and keepalive settings shared by both ends.

    Clients ping every `keepalive_time_ms` even without active calls (NAT/VPN idle timers are
    often 60-300 s); the server accepts pings as often as `server_min_ping_interval_ms`, which must
    stay below the client interval or the server answers with GOAWAY "too_many_pings".
    """

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    keepalive_time_ms: int = 30_000
    keepalive_timeout_ms: int = 10_000
    server_keepalive_time_ms: int = 60_000
    server_min_ping_interval_ms: int = 10_000
    initial_reconnect_backoff_ms: int = 1_000
    max_reconnect_backoff_ms: int = 30_000

    def __post_init__(self) -> None:
        if self.max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be >= 1, got {self.max_message_bytes}")
        if self.server_min_ping_interval_ms > self.keepalive_time_ms:
            raise ValueError(
                "server_min_ping_interval_ms must not exceed keepalive_time_ms, or the server"
                " rejects the clients' keepalive pings"
            )


@dataclass(frozen=True)
class TlsKit:
    """CA certificate, own certificate and own private key, as PEM bytes."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def __post_init__(self) -> None:
        ca = _load_cert(self.ca_pem, "CA certificate")
        cert = _load_cert(self.cert_pem, "certificate")
        try:
            key = serialization.load_pem_private_key(self.key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise TlsError(f"private key is not an unencrypted PEM key: {exc}") from exc
        if key.public_key() != cert.public_key():
            raise TlsError("private key does not match the certificate")
        object.__setattr__(self, "_ca", ca)
        object.__setattr__(self, "_cert", cert)

    @property
    def ca_certificate(self) -> x509.Certificate:
        """The consortium CA, parsed once: peers' certificates and the roster verify against it."""
        ca: x509.Certificate = self.__dict__["_ca"]
        return ca

    @property
    def certificate(self) -> x509.Certificate:
        """This participant's own certificate, parsed once (its SAN says who it is)."""
        cert: x509.Certificate = self.__dict__["_cert"]
        return cert

    @property
    def identity(self) -> Identity:
        """Who this kit authenticates as."""
        try:
            return identity_from_certificate(self.certificate)
        except IdentityError as exc:
            raise TlsError(f"kit certificate: {exc}") from exc

    @classmethod
    def from_files(cls, ca: Path, cert: Path, key: Path) -> TlsKit:
        """Read the three PEM files; TlsError names the file that is missing or unreadable, and
        a key that does not match its certificate is refused before any connection."""
        return cls(_read(ca, "CA certificate"), _read(cert, "certificate"), _read(key, "key"))

    @classmethod
    def from_kit_dir(cls, kit_dir: Path) -> TlsKit:
        """Load a startup kit: paths from its starter config's [tls] table, else default names."""
        for config_name in (SITE_CONFIG, OPERATOR_CONFIG, COORDINATOR_CONFIG):
            config = kit_dir / config_name
            if config.is_file():
                return cls.from_config(config)
        for cert, key in ((CLIENT_CERT, CLIENT_KEY), (SERVER_CERT, SERVER_KEY)):
            if (kit_dir / cert).is_file():
                return cls.from_files(kit_dir / CA_CERT, kit_dir / cert, kit_dir / key)
        raise TlsError(f"{kit_dir} is not a startup kit (no config and no certificate)")

    @classmethod
    def from_config(cls, config: Path) -> TlsKit:
        """Load from a TOML file's [tls] ca/cert/key (relative paths: to the file's folder)."""
        try:
            data = tomllib.loads(config.read_text(encoding="utf-8"))
        except OSError as exc:
            raise TlsError(f"cannot read {config}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise TlsError(f"{config}: not valid TOML: {exc}") from exc
        return cls.from_table(data.get("tls"), base=config.parent, source=str(config))

    @classmethod
    def from_table(cls, table: object, *, base: Path, source: str) -> TlsKit:
        """Load from an already-parsed [tls] table (for configs that embed it)."""
        if not isinstance(table, dict):
            raise TlsError(f"{source}: missing [tls] table")
        paths: list[Path] = []
        for field in ("ca", "cert", "key"):
            value = table.get(field)
            if not isinstance(value, str) or not value:
                raise TlsError(f"{source}: tls.{field} must be a non-empty path string")
            paths.append(base / value)
        return cls.from_files(*paths)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read {what} {path}: {exc.strerror}") from exc


def _load_cert(pem: bytes, what: str) -> x509.Certificate:
    try:
        return load_certificate(pem)
    except IdentityError as exc:
        raise TlsError(f"{what}: {exc}") from exc


def server_credentials(kit: TlsKit) -> grpc.ServerCredentials:
    """Server side of mutual TLS: clients must present a certificate from the consortium CA."""
    return grpc.ssl_server_credentials(
        [(kit.key_pem, kit.cert_pem)],
        root_certificates=kit.ca_pem,
        require_client_auth=True,
    )


def channel_credentials(kit: TlsKit) -> grpc.ChannelCredentials:
    """Client side of mutual TLS: trust only the consortium CA and present our certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=kit.ca_pem,
        private_key=kit.key_pem,
        certificate_chain=kit.cert_pem,
    )


GrpcOptions = list[tuple[str, Any]]


def channel_options(
    settings: TransportSettings | None = None, *, target_name_override: str | None = None
) -> GrpcOptions:
    """Client channel options: message limits, keepalive for long-polls, reconnect backoff."""
    s = settings or TransportSettings()
    options: GrpcOptions = [
        ("grpc.max_send_message_length", s.max_message_bytes),
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.keepalive_time_ms", s.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", s.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", s.initial_reconnect_backoff_ms),
        ("grpc.max_reconnect_backoff_ms", s.max_reconnect_backoff_ms),
    ]
    if target_name_override:
        options.append(("grpc.ssl_target_name_override", target_name_override))
    return options


def server_options(settings: TransportSettings | None = None) -> GrpcOptions:
    """Server options: message limits, accept client keepalive pings, detect dead peers."""
    s = settings or TransportSettings()
    return [
        ("grpc.max_send_message_length", s.max_message_bytes),
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.keepalive_time_ms", s.server_keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", s.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", s.server_min_ping_interval_ms),
        ("grpc.http2.max_ping_strikes", 0),
    ]


def secure_channel(
    address: str, kit: TlsKit, settings: TransportSettings | None = None
) -> grpc.Channel:
    """A blocking-API channel over mutual TLS."""
    return grpc.secure_channel(address, channel_credentials(kit), options=channel_options(settings))


def aio_secure_channel(
    address: str, kit: TlsKit, settings: TransportSettings | None = None
) -> grpc.aio.Channel:
    """An asyncio channel over mutual TLS."""
    return grpc.aio.secure_channel(
        address, channel_credentials(kit), options=channel_options(settings)
    )


def identity_from_auth_context(auth_context: Mapping[str, Iterable[bytes]]) -> Identity | None:
    """The Identity in a gRPC auth context's peer certificate, or None if absent or invalid."""
    pems = list(auth_context.get(PEER_CERT_KEY, ()))
    if len(pems) != 1:
        return None
    try:
        return identity_from_certificate(load_certificate(pems[0]))
    except IdentityError:
        return None


def peer_identity(
    context: grpc.ServicerContext | grpc.aio.ServicerContext[Any, Any],
) -> Identity | None:
    """The caller's Identity from its mTLS certificate (sync or asyncio servicer context)."""
    return identity_from_auth_context(context.auth_context())
