"""TLS kits and transport settings: inconsistent kits and unsafe settings are refused early."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.identity import Identity
from federation.pki import CertificateAuthority
from federation.tls import (
    PEER_CERT_KEY,
    TlsError,
    TlsKit,
    TransportSettings,
    channel_options,
    identity_from_auth_context,
    server_options,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("tls-test", validity_days=10)


def test_kit_with_a_key_from_another_certificate_is_refused(ca: CertificateAuthority) -> None:
    a = ca.issue(Identity("site", "a1"), validity_days=1)
    b = ca.issue(Identity("site", "b2"), validity_days=1)
    with pytest.raises(TlsError, match="does not match"):
        TlsKit(ca.issued.certificate_pem, a.certificate_pem, b.key_pem)
    assert TlsKit(ca.issued.certificate_pem, a.certificate_pem, a.key_pem).identity == Identity(
        "site", "a1"
    )


def test_kit_config_errors_name_the_field(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text('[tls]\nca = "ca.pem"\ncert = ""\nkey = "client.key"\n')
    with pytest.raises(TlsError, match=r"tls\.cert"):
        TlsKit.from_kit_dir(tmp_path)
    config.write_text('[tls]\nca = "ca.pem"\ncert = "client.pem"\nkey = "client.key"\n')
    with pytest.raises(TlsError, match="cannot read CA certificate"):
        TlsKit.from_kit_dir(tmp_path)
    config.write_text("[site]\n")
    with pytest.raises(TlsError, match=r"missing \[tls\]"):
        TlsKit.from_kit_dir(tmp_path)
    with pytest.raises(TlsError, match="not a startup kit"):
        TlsKit.from_kit_dir(tmp_path / "empty")


def test_settings_refuse_a_server_that_would_reject_client_pings() -> None:
    with pytest.raises(ValueError, match="server_min_ping_interval_ms"):
        TransportSettings(keepalive_time_ms=5_000, server_min_ping_interval_ms=10_000)
    with pytest.raises(ValueError, match="max_message_bytes"):
        TransportSettings(max_message_bytes=0)


def test_options_carry_the_configured_limits() -> None:
    settings = TransportSettings(max_message_bytes=123_456)
    client = dict(channel_options(settings))
    server = dict(server_options(settings))
    for options in (client, server):
        assert options["grpc.max_send_message_length"] == 123_456
        assert options["grpc.max_receive_message_length"] == 123_456
    assert (
        server["grpc.http2.min_ping_interval_without_data_ms"] <= client["grpc.keepalive_time_ms"]
    )
    assert dict(channel_options())["grpc.max_receive_message_length"] >= 16 * 1024 * 1024


def test_identity_from_auth_context(ca: CertificateAuthority) -> None:
    site = ca.issue(Identity("site", "a1"), validity_days=1)
    assert identity_from_auth_context({PEER_CERT_KEY: [site.certificate_pem]}) == Identity(
        "site", "a1"
    )
    assert identity_from_auth_context({}) is None
    assert identity_from_auth_context({PEER_CERT_KEY: [b"garbage"]}) is None
