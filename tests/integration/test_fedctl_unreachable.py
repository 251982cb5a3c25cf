"""`fedctl` names the address and the cause when the coordinator cannot be reached, as the site
agent does: a wrong host name, a closed port and another consortium's coordinator each get their
own line (real operator kit, real loopback servers with certificates made by the test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fedctl.cli import run as fedctl
from fedctl.localfed import LocalFederation
from federation.pki import CertificateAuthority
from tests.integration.federation.test_connection_errors import (
    Server,
    coordinator_cert,
    free_port,
    serve,
)

pytestmark = pytest.mark.integration
__all__ = ["serve"]  # the fixture, imported for pytest


@pytest.fixture(scope="module")
def operator_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A provisioned consortium's operator kit (no process started)."""
    fed = LocalFederation(tmp_path_factory.mktemp("unreachable") / "fed", ("hospital-a",))
    fed.prepare()
    yield fed.operator_config()


def fedctl_error(
    config: Path,
    address: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> str:
    monkeypatch.setenv("CONCORDIA_COORDINATOR_ADDRESS", address)
    capsys.readouterr()
    assert fedctl(["runs", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and address in err, err
    assert "site.toml" not in err and "this site" not in err, err
    return err


def test_a_host_name_that_does_not_resolve(
    operator_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    err = fedctl_error(operator_config, "coordinatr.invalid:7443", monkeypatch, capsys)
    assert err.startswith("fedctl: error: coordinator unreachable [dns]: cannot resolve"), err
    assert "fedctl.toml" in err


def test_a_port_nobody_listens_on(
    operator_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    err = fedctl_error(operator_config, f"127.0.0.1:{port}", monkeypatch, capsys)
    assert err.startswith("fedctl: error: coordinator unreachable [refused]:"), err
    assert f"port {port}" in err


def test_another_consortiums_coordinator(
    operator_config: Path,
    serve: Server,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    other = CertificateAuthority.create("other-consortium", validity_days=30)
    address = serve(other, coordinator_cert(other))
    err = fedctl_error(operator_config, address, monkeypatch, capsys)
    assert err.startswith("fedctl: error: coordinator unreachable [unknown_ca]:"), err
    assert "O=other-consortium" in err and "this operator's CA" in err
