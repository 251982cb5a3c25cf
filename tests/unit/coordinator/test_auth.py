"""The authorisation table and the coordinator's roster file: who may call what, and re-reading
the roster without a restart."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from coordinator.auth import AUTHORISATION, RosterWatcher, authorise
from coordinator.server import main as coordinator_main
from federation.consortium import parse_consortium
from federation.identity import Identity
from federation.pki import CertificateAuthority
from federation.provisioning import provision
from federation.roster import Roster, RosterEntry, RosterError, sign_roster
from federation.wire.v1 import admin_pb2, federation_pb2

pytestmark = pytest.mark.unit

SITE = Identity("site", "a1")
ADMIN = Identity("operator", "alice", "admin")
VIEWER = Identity("operator", "victor", "viewer")
COORDINATOR = Identity("coordinator", "coordinator")
NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def _methods() -> list[str]:
    return [
        f"/{service.full_name}/{method.name}"
        for module in (federation_pb2, admin_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


def test_every_rpc_has_exactly_one_rule() -> None:
    assert sorted(AUTHORISATION) == sorted(_methods())


LEAST_PRIVILEGE = [
    ("Federation/Hello", {SITE}),
    ("Federation/PullTask", {SITE}),
    ("Federation/PushResult", {SITE}),
    ("Federation/PushAndPull", {SITE}),
    ("Federation/GetCertificates", {SITE}),
    ("Admin/SubmitRun", {ADMIN}),
    ("Admin/StopRun", {ADMIN}),
    ("Admin/ExportRun", {ADMIN}),
    ("Admin/ListRuns", {ADMIN, VIEWER}),
    ("Admin/GetRun", {ADMIN, VIEWER}),
    ("Admin/WatchRun", {ADMIN, VIEWER}),
    ("Admin/ListSites", {ADMIN, VIEWER}),
    ("Admin/GetAudit", {ADMIN, VIEWER}),
    ("Admin/VerifyAudit", {ADMIN, VIEWER}),
]


def test_every_rpc_has_a_least_privilege_case() -> None:
    """A new RPC (PushAndPull was one) must say here who may call it, not only in the table."""
    cases = [f"/concordia.federation.v1.{method}" for method, _ in LEAST_PRIVILEGE]
    assert sorted(cases) == sorted(_methods())


@pytest.mark.parametrize(("method", "allowed"), LEAST_PRIVILEGE)
def test_least_privilege(method: str, allowed: set[Identity]) -> None:
    path = f"/concordia.federation.v1.{method}"
    for identity in (SITE, ADMIN, VIEWER, COORDINATOR):
        reason = authorise(path, identity)
        assert (reason is None) == (identity in allowed), (path, identity, reason)
    assert authorise(path, None) == "no Concordia client certificate"


def test_refusal_reasons() -> None:
    export = "/concordia.federation.v1.Admin/ExportRun"
    assert authorise(export, VIEWER) == "role viewer may not ExportRun"
    assert authorise(export, SITE) == "urn:concordia:site:a1 is not an operator"
    hello = "/concordia.federation.v1.Federation/Hello"
    assert authorise(hello, ADMIN) == "urn:concordia:operator:alice:admin is not a site"
    assert authorise("/other.Admin/ExportRun", ADMIN) == "unknown method /other.Admin/ExportRun"
    assert authorise("/grpc.health.v1.Health/Check", None) is None


def _replace(path: Path, data: bytes) -> None:
    """As fedctl provision writes it: a new file renamed over the old one."""
    scratch = path.with_suffix(".tmp")
    scratch.write_bytes(data)
    os.replace(scratch, path)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_watcher_rereads_a_changed_roster_at_most_once_a_second(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("c", validity_days=9, now=NOW)
    a1 = ca.issue(SITE, validity_days=9, now=NOW)
    b2 = ca.issue(Identity("site", "b2"), validity_days=9, now=NOW)
    v1 = Roster("c", 1, NOW, (RosterEntry.from_certificate(a1.certificate),))
    path = tmp_path / "roster.json"
    path.write_bytes(sign_roster(v1, ca))
    clock, seen = _Clock(), []
    watcher = RosterWatcher(path, ca.certificate, clock=clock, on_change=seen.append)
    assert watcher.roster.version == 1 and watcher.signed == path.read_bytes()

    v2 = v1.with_issued(b2.certificate, NOW)
    _replace(path, sign_roster(v2, ca))
    clock.now += 0.5
    assert watcher.roster.version == 1  # not looked at yet
    clock.now += 0.6
    assert watcher.roster.version == 2 and [r.version for r in seen] == [2]
    assert watcher.roster.check(Identity("site", "b2"), b2.certificate) is None

    # a broken file, an older version and a deleted file all leave version 2 in force
    for content in (b"{broken", sign_roster(v1, ca), None):
        if content is None:
            path.unlink()
        else:
            _replace(path, content)
        clock.now += 1.1
        assert watcher.roster.version == 2
    assert [r.version for r in seen] == [2]


def test_the_coordinator_refuses_to_start_without_its_roster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    consortium = parse_consortium(
        {
            "consortium": {"name": "c"},
            "coordinator": {"hosts": ["localhost"], "port": 1},
            "sites": ["a1"],
        }
    )
    provision(consortium, tmp_path / "kits")
    (tmp_path / "kits/coordinator/roster.json").unlink()
    config = tmp_path / "kits/coordinator/coordinator.toml"
    assert coordinator_main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read the consortium roster" in err
    assert "roster.json" in err
    with pytest.raises(RosterError, match="cannot read"):
        RosterWatcher(
            tmp_path / "none.json", CertificateAuthority.create("c", validity_days=1).certificate
        )
