"""The site's roster: newest valid copy wins, only newer signed rosters are taken, participants
are checked against it."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest

from federation.identity import Identity
from federation.pki import CertificateAuthority, IssuedCertificate
from federation.roster import Roster, RosterEntry, RosterError, sign_roster
from site_agent.roster import SiteRoster

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("c", validity_days=30, now=NOW)


@pytest.fixture(scope="module")
def certs(ca: CertificateAuthority) -> dict[str, IssuedCertificate]:
    return {n: ca.issue(Identity("site", n), validity_days=9, now=NOW) for n in ("a1", "b2", "c3")}


@pytest.fixture(scope="module")
def v1(certs: dict[str, IssuedCertificate]) -> Roster:
    entries = tuple(RosterEntry.from_certificate(certs[n].certificate) for n in ("a1", "b2"))
    return Roster("c", 1, NOW, entries)


def _pem(issued: IssuedCertificate) -> str:
    return issued.certificate_pem.decode()


def _site(tmp_path: Path, ca: CertificateAuthority, kit_roster: bytes | None) -> SiteRoster:
    kit = tmp_path / "kit" / "roster.json"
    kit.parent.mkdir(exist_ok=True)
    if kit_roster is not None:
        kit.write_bytes(kit_roster)
    return SiteRoster(tmp_path / "state", kit, ca.certificate)


def test_offer_takes_only_newer_signed_rosters_and_keeps_them(
    tmp_path: Path, ca: CertificateAuthority, certs: dict[str, IssuedCertificate], v1: Roster
) -> None:
    site = _site(tmp_path, ca, sign_roster(v1, ca))
    assert site.version == 1
    (b2,) = v1.active("b2")
    v2 = v1.with_revoked(b2, "left", NOW).with_issued(certs["c3"].certificate, NOW)
    change = site.offer(sign_roster(v2, ca))
    assert change == "roster v1 -> v3: added site c3; revoked site b2 (left)"
    assert site.version == 3
    state = tmp_path / "state" / "roster.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    # rollback: the older roster, validly signed, is not taken
    assert site.offer(sign_roster(v1, ca)) is None
    assert site.offer(sign_roster(v2, ca)) is None
    assert site.offer(b"") is None
    assert site.version == 3
    # a restarted agent starts from the newest copy (state), not the kit's v1
    again = _site(tmp_path, ca, None)
    assert again.version == 3 and again.problems == []
    with pytest.raises(RosterError, match="revoked on 2026-03-01: left"):
        again.check_participant("b2", _pem(certs["b2"]))


def test_a_bad_or_foreign_roster_offer_raises_and_changes_nothing(
    tmp_path: Path, ca: CertificateAuthority, certs: dict[str, IssuedCertificate], v1: Roster
) -> None:
    site = _site(tmp_path, ca, sign_roster(v1, ca))
    v2 = v1.with_issued(certs["c3"].certificate, NOW)
    document = json.loads(sign_roster(v2, ca))
    document["roster"]["version"] = 99
    with pytest.raises(RosterError, match="signature does not verify"):
        site.offer(json.dumps(document).encode())
    other = CertificateAuthority.create("c", validity_days=30, now=NOW)
    with pytest.raises(RosterError, match="signature does not verify"):
        site.offer(sign_roster(v2, other))
    with pytest.raises(RosterError, match="not valid JSON"):
        site.offer(b"garbage")
    assert site.version == 1
    assert not (tmp_path / "state" / "roster.json").exists()


def test_check_participant(
    tmp_path: Path, ca: CertificateAuthority, certs: dict[str, IssuedCertificate], v1: Roster
) -> None:
    renewed = ca.issue(Identity("site", "a1"), validity_days=9, now=NOW)
    site = _site(tmp_path, ca, sign_roster(v1.with_issued(renewed.certificate, NOW), ca))
    site.check_participant("a1", _pem(renewed))
    site.check_participant("b2", _pem(certs["b2"]))
    with pytest.raises(RosterError, match="revoked on 2026-03-01: superseded"):
        site.check_participant("a1", _pem(certs["a1"]))
    with pytest.raises(RosterError, match="not on the consortium roster"):
        site.check_participant("c3", _pem(certs["c3"]))
    with pytest.raises(RosterError, match="not on the consortium roster"):
        site.check_participant("b2", _pem(renewed))  # a1's certificate, claimed for b2
    with pytest.raises(RosterError, match="not a PEM certificate"):
        site.check_participant("b2", "junk")


def test_invalid_copies_are_skipped_and_reported(
    tmp_path: Path, ca: CertificateAuthority, certs: dict[str, IssuedCertificate], v1: Roster
) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "roster.json").write_text('{"roster": {}, "signature": ""}')
    site = _site(tmp_path, ca, sign_roster(v1, ca))
    assert site.version == 1
    assert len(site.problems) == 1 and "state/roster.json" in site.problems[0]
    with pytest.raises(RosterError, match="no valid consortium roster"):
        SiteRoster(tmp_path / "empty", tmp_path / "nowhere.json", ca.certificate)
    with pytest.raises(RosterError, match=r"no valid consortium roster: .*version"):
        _site(tmp_path, ca, b'{"roster": {"version": 0}, "signature": ""}')
