"""`fedctl provision`: kit files, modes, certificate contents, refusals, bad consortium files, the
signed roster, and changing one identity (add-site, renew, revoke) with the same CA."""

from __future__ import annotations

import ipaddress
import json
import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedctl.cli import run as fedctl
from federation.identity import Identity, identity_from_certificate, verify_peer_certificate
from federation.provisioning import ProvisionError, issue_site_kit, load_ca
from federation.roster import Roster, certificate_fingerprint, load_signed_roster
from federation.roster_changes import add_site, revoke
from federation.tls import TlsKit

pytestmark = pytest.mark.unit

CONSORTIUM = """
sites = ["hospital-a", "hospital-b"]

[consortium]
name = "test consortium"
validity_days = 30

[coordinator]
hosts = ["coord.example.org", "127.0.0.1", "::1"]
port = 7443

[[operators]]
name = "alice"
role = "admin"

[[operators]]
name = "victor"
role = "viewer"
"""


def _write(tmp_path: Path, text: str = CONSORTIUM) -> Path:
    path = tmp_path / "consortium.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("prov")
    out = tmp / "kits"
    assert fedctl(["provision", str(_write(tmp)), "--out", str(out)]) == 0
    return out


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_kit_layout_and_key_modes(kits: Path) -> None:
    expected = {
        "ca": {"ca.pem", "ca.key", "roster.json"},
        "coordinator": {"ca.pem", "roster.json", "server.pem", "server.key", "coordinator.toml"},
        "sites/hospital-a": {"ca.pem", "roster.json", "client.pem", "client.key", "site.toml"},
        "sites/hospital-b": {"ca.pem", "roster.json", "client.pem", "client.key", "site.toml"},
        "operators/alice": {"ca.pem", "roster.json", "client.pem", "client.key", "fedctl.toml"},
        "operators/victor": {"ca.pem", "roster.json", "client.pem", "client.key", "fedctl.toml"},
    }
    for folder, names in expected.items():
        assert {p.name for p in (kits / folder).iterdir()} == names, folder
        for key in (kits / folder).glob("*.key"):
            assert _mode(key) == 0o600, key
            loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
            assert isinstance(loaded, ec.EllipticCurvePrivateKey)
            assert loaded.curve.name == "secp256r1"
    ca_key_copies = list(kits.rglob("ca.key"))
    assert ca_key_copies == [kits / "ca" / "ca.key"]


def test_coordinator_certificate_has_sans_and_server_auth(kits: Path) -> None:
    cert = _cert(kits / "coordinator" / "server.pem")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coord.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert identity_from_certificate(cert) == Identity("coordinator", "coordinator")
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_client_certificates_carry_identity_and_client_auth(kits: Path) -> None:
    ca = _cert(kits / "ca" / "ca.pem")
    cases = {
        "sites/hospital-a": Identity("site", "hospital-a"),
        "operators/alice": Identity("operator", "alice", "admin"),
        "operators/victor": Identity("operator", "victor", "viewer"),
    }
    for folder, identity in cases.items():
        pem = (kits / folder / "client.pem").read_bytes()
        assert verify_peer_certificate(pem, ca) == identity
        cert = _cert(kits / folder / "client.pem")
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
        assert days == 30


def test_starter_configs_point_at_the_kit(kits: Path) -> None:
    site = tomllib.loads((kits / "sites/hospital-a/site.toml").read_text())
    assert site["coordinator"]["address"] == "coord.example.org:7443"
    assert site["site"]["id"] == "hospital-a"
    # [data] names the export's place in the kit; [policy] shows the defaults in force; the
    # data mapping is commented examples (tests/unit/site_agent/test_starter_kit.py loads both)
    assert site["data"]["csv"] == "data/cohort.csv"
    assert site["policy"]["max_epsilon_per_run"] == 3.0
    text = (kits / "sites/hospital-a/site.toml").read_text()
    assert "# [data.columns]" in text and "# event_values = " in text
    coordinator = tomllib.loads((kits / "coordinator/coordinator.toml").read_text())
    # it listens on the consortium's coordinator hosts, not on every interface
    assert coordinator["server"]["listen"] == [
        "coord.example.org:7443",
        "127.0.0.1:7443",
        "[::1]:7443",
    ]
    operator = tomllib.loads((kits / "operators/victor/fedctl.toml").read_text())
    assert operator["coordinator"]["address"] == "coord.example.org:7443"
    for folder, expected in [
        ("sites/hospital-a", Identity("site", "hospital-a")),
        ("operators/victor", Identity("operator", "victor", "viewer")),
        ("coordinator", Identity("coordinator", "coordinator")),
    ]:
        assert TlsKit.from_kit_dir(kits / folder).identity == expected


def test_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    consortium = _write(tmp_path)
    out = tmp_path / "kits"
    assert fedctl(["provision", str(consortium), "--out", str(out)]) == 0
    before = (out / "ca" / "ca.pem").read_bytes()
    capsys.readouterr()
    assert fedctl(["provision", str(consortium), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err and err.count("\n") == 1
    assert (out / "ca" / "ca.pem").read_bytes() == before
    assert fedctl(["provision", str(consortium), "--out", str(out), "--force"]) == 0
    assert (out / "ca" / "ca.pem").read_bytes() != before
    assert _mode(out / "sites/hospital-a/client.key") == 0o600


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ('"hospital-a", "hospital-b"', '"hospital-a", "Hospital_B"', "sites[1]"),
        ('"hospital-a", "hospital-b"', '"hospital-a", "hospital-a"', "sites"),
        ('role = "viewer"', 'role = "root"', "operators[1].role"),
        ('"127.0.0.1"', '"not a host!"', "coordinator.hosts"),
        ("port = 7443", "port = 70000", "coordinator.port"),
        ("validity_days = 30", "validity_days = 30\ncolour = 1", "consortium.colour"),
        ('name = "test consortium"\n', "", "consortium.name"),
    ],
)
def test_bad_consortium_file_names_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, field: str
) -> None:
    assert old in CONSORTIUM
    consortium = _write(tmp_path, CONSORTIUM.replace(old, new, 1))
    assert fedctl(["provision", str(consortium), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedctl: error:") and f": {field}:" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_invalid_toml_and_missing_file_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fedctl(["provision", str(_write(tmp_path, "sites = [")), "--out", "x"]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert fedctl(["provision", str(tmp_path / "nope.toml"), "--out", "x"]) == 2
    assert "cannot read consortium file" in capsys.readouterr().err


def test_json_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "kits"
    args = ["provision", str(_write(tmp_path)), "--out", str(out), "--output", "json"]
    assert fedctl(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["coordinator"]["address"] == "coord.example.org:7443"
    assert set(summary["sites"]) == {"hospital-a", "hospital-b"}


def test_issue_site_kit_from_existing_ca(kits: Path, tmp_path: Path) -> None:
    ca = load_ca(kits / "ca")
    kit = issue_site_kit(
        ca,
        "hospital-c",
        tmp_path / "hospital-c",
        coordinator_address="coord.example.org:7443",
        consortium="test consortium",
    )
    pem = (kit / "client.pem").read_bytes()
    assert verify_peer_certificate(pem, _cert(kits / "ca" / "ca.pem")) == Identity(
        "site", "hospital-c"
    )
    assert _mode(kit / "client.key") == 0o600
    # Rotation: refused without force; with force a new certificate, the edited config kept.
    (kit / "site.toml").write_text((kit / "site.toml").read_text() + "\n# edited here\n")
    with pytest.raises(ProvisionError, match="already exists"):
        issue_site_kit(ca, "hospital-c", kit, coordinator_address="h:1", consortium="t")
    issue_site_kit(ca, "hospital-c", kit, coordinator_address="h:1", consortium="t", force=True)
    assert (kit / "client.pem").read_bytes() != pem
    assert "# edited here" in (kit / "site.toml").read_text()


def test_validity_days_flag_overrides_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "kits"
    args = ["provision", str(_write(tmp_path)), "--out", str(out), "--validity-days", "400"]
    assert fedctl(args) == 0
    for pem in (out / "ca/ca.pem", out / "sites/hospital-b/client.pem"):
        cert = _cert(pem)
        assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 400
    bad = ["provision", str(_write(tmp_path)), "--out", str(tmp_path / "x"), "--validity-days", "0"]
    assert fedctl(bad) == 2
    assert "--validity-days: validity_days:" in capsys.readouterr().err


# ---------------------------------------------------------------------- the roster


KIT_FOLDERS = (
    "ca",
    "coordinator",
    "sites/hospital-a",
    "sites/hospital-b",
    "operators/alice",
    "operators/victor",
)


def _roster(out: Path, folder: str = "ca") -> Roster:
    return load_signed_roster((out / folder / "roster.json").read_bytes(), _cert(out / "ca/ca.pem"))


def _same_roster_everywhere(out: Path, folders: tuple[str, ...] = KIT_FOLDERS) -> Roster:
    data = {(out / f / "roster.json").read_bytes() for f in folders}
    assert len(data) == 1, "kits hold different rosters"
    return _roster(out)


def test_provision_writes_one_signed_roster_of_every_certificate(kits: Path) -> None:
    roster = _same_roster_everywhere(kits)
    assert roster.consortium == "test consortium" and roster.version == 1 and not roster.revoked
    assert roster.active_site_names() == frozenset({"hospital-a", "hospital-b"})
    for folder, cert_name in [
        ("coordinator", "server.pem"),
        ("sites/hospital-a", "client.pem"),
        ("operators/victor", "client.pem"),
    ]:
        cert = _cert(kits / folder / cert_name)
        assert roster.check(identity_from_certificate(cert), cert) is None, folder
    assert _mode(kits / "sites/hospital-a/roster.json") == 0o644


@pytest.fixture
def fresh(tmp_path: Path) -> Path:
    out = tmp_path / "kits"
    assert fedctl(["provision", str(_write(tmp_path)), "--out", str(out)]) == 0
    return out


def test_add_site_issues_a_kit_and_a_new_roster_version(
    fresh: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert fedctl(["provision", "add-site", "hospital-c", "--out", str(fresh)]) == 0
    out = capsys.readouterr().out
    assert "added site hospital-c: roster version 2" in out and "coordinator" in out
    kit = fresh / "sites/hospital-c"
    assert {p.name for p in kit.iterdir()} == {
        "ca.pem",
        "roster.json",
        "client.pem",
        "client.key",
        "site.toml",
    }
    assert _mode(kit / "client.key") == 0o600
    site = tomllib.loads((kit / "site.toml").read_text())
    assert site["coordinator"]["address"] == "coord.example.org:7443"
    roster = _same_roster_everywhere(fresh, (*KIT_FOLDERS, "sites/hospital-c"))
    assert roster.version == 2
    assert roster.active_site_names() == frozenset({"hospital-a", "hospital-b", "hospital-c"})
    cert = _cert(kit / "client.pem")
    assert roster.check(Identity("site", "hospital-c"), cert) is None
    assert verify_peer_certificate(
        kit.joinpath("client.pem").read_bytes(), _cert(fresh / "ca/ca.pem")
    )

    # refused: the same site again, an existing operator's name, a bad name
    for name, message in [
        ("hospital-c", "already on the roster"),
        ("alice", "already on the roster"),
        ("Bad_Name", "must match"),
    ]:
        assert fedctl(["provision", "add-site", name, "--out", str(fresh)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert _roster(fresh).version == 2


def test_renew_replaces_the_certificate_keeps_the_config_and_supersedes_the_old_one(
    fresh: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kit = fresh / "sites/hospital-a"
    (kit / "site.toml").write_text((kit / "site.toml").read_text() + "\n# edited here\n")
    old = _cert(kit / "client.pem")
    old_victor = _cert(fresh / "operators/victor/client.pem")
    args = ["provision", "renew", "hospital-a", "--out", str(fresh), "--output", "json"]
    assert fedctl(args) == 0
    summary = json.loads(capsys.readouterr().out)
    new = _cert(kit / "client.pem")
    assert summary["action"] == "renew" and summary["roster_version"] == 2
    assert summary["superseded"] == certificate_fingerprint(old)
    assert summary["fingerprint"] == certificate_fingerprint(new)
    assert "# edited here" in (kit / "site.toml").read_text()
    identity = Identity("site", "hospital-a")
    roster = _same_roster_everywhere(fresh)
    assert roster.check(identity, new) is None
    reason = roster.check(identity, old)
    assert reason is not None and reason.endswith(": superseded") and "revoked on" in reason
    assert TlsKit.from_kit_dir(kit).identity == identity

    # an operator keeps its role and its fedctl.toml
    config = (fresh / "operators/victor/fedctl.toml").read_text()
    assert fedctl(["provision", "renew", "victor", "--out", str(fresh)]) == 0
    assert "renewed operator victor (viewer): roster version 3" in capsys.readouterr().out
    assert (fresh / "operators/victor/fedctl.toml").read_text() == config
    victor = _cert(fresh / "operators/victor/client.pem")
    assert identity_from_certificate(victor) == Identity("operator", "victor", "viewer")
    roster = _same_roster_everywhere(fresh)
    assert roster.check(Identity("operator", "victor", "viewer"), victor) is None
    assert roster.check(Identity("operator", "victor", "viewer"), old_victor) is not None

    for name, message in [("nobody", "not on the roster"), ("coordinator", "coordinator")]:
        assert fedctl(["provision", "renew", name, "--out", str(fresh)]) == 2
        assert message in capsys.readouterr().err


def test_revoke_once_and_refuse_twice(fresh: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert = _cert(fresh / "sites/hospital-b/client.pem")
    args = ["provision", "revoke", "hospital-b", "--out", str(fresh), "--reason", "left"]
    assert fedctl(args) == 0
    assert "revoked site hospital-b: roster version 2" in capsys.readouterr().out
    roster = _same_roster_everywhere(fresh)
    assert roster.active_site_names() == frozenset({"hospital-a"})
    reason = roster.check(Identity("site", "hospital-b"), cert)
    assert reason is not None and "revoked on" in reason and reason.endswith(": left")
    for argv, message in [
        (args, "already revoked on"),
        (["provision", "revoke", "ghost", "--out", str(fresh)], "not on the roster"),
        (["provision", "revoke", "hospital-a", "--out", str(fresh), "--force"], "--force"),
        (["provision", "renew", "hospital-b", "--out", str(fresh)], "already revoked"),
        (["provision", "revoke", "--out", str(fresh)], "needs a NAME"),
    ]:
        assert fedctl(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert _roster(fresh).version == 2
    # a revoked site can come back only as a new kit: not while its old kit folder exists
    with pytest.raises(ProvisionError, match="already exists"):
        add_site(fresh, "hospital-b")


def test_changes_need_the_ca_and_its_roster(
    fresh: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (fresh / "ca/roster.json").unlink()
    with pytest.raises(ProvisionError, match="cannot read the consortium roster"):
        revoke(fresh, "hospital-a", "x")
    (fresh / "ca/ca.key").unlink()
    assert fedctl(["provision", "add-site", "hospital-z", "--out", str(fresh)]) == 2
    assert "cannot read the CA" in capsys.readouterr().err
    assert not (fresh / "sites/hospital-z").exists()
