"""A real coordinator process with no site agents, for tests that answer as the sites themselves
over real mutual TLS (raw `Federation` stubs): the coordinator-side integration tests share it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedctl.localfed import LocalFederation
from federation.tls import TlsKit, TransportSettings, secure_channel
from federation.wire.v1 import federation_pb2_grpc

TWO_SITES = ("hospital-a", "hospital-b")
AGE_PLAN = """
name = "{name}"
quorum = 2
[[features]]
kind = "numeric"
name = "age"
min = 40
max = 110
[time_grid]
cuts = [1000.0, 2000.0]
"""
"""A minimal valid two-site plan (format with `name`); tests append their own tables."""


@contextmanager
def coordinator_only(
    workdir: Path, sites: tuple[str, ...] = TWO_SITES
) -> Iterator[LocalFederation]:
    """Provisioned kits for `sites` and a running coordinator; stopped on exit."""
    federation = LocalFederation(workdir, sites)
    federation.prepare()
    federation.start_coordinator()
    try:
        federation.wait_ready(federation.admin())
        yield federation
    finally:
        federation.stop_all()


def site_stub(fed: LocalFederation, site: str) -> federation_pb2_grpc.FederationStub:
    """The site-facing API as `site` (its own kit's certificate)."""
    kit = TlsKit.from_kit_dir(fed.site_kit(site))
    channel = secure_channel(f"localhost:{fed.port}", kit, TransportSettings())
    return federation_pb2_grpc.FederationStub(channel)  # type: ignore[no-untyped-call]
