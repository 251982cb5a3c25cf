"""The signed consortium roster: signing, verification, and which certificates it admits."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from federation.identity import Identity
from federation.pki import CertificateAuthority, IssuedCertificate
from federation.roster import (
    SIGNING_CONTEXT,
    Roster,
    RosterEntry,
    RosterError,
    canonical_bytes,
    certificate_fingerprint,
    load_signed_roster,
    sign_roster,
)

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(days=3)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("test consortium", validity_days=30, now=NOW)


@pytest.fixture(scope="module")
def certs(ca: CertificateAuthority) -> dict[str, IssuedCertificate]:
    identities = {
        "coordinator": Identity("coordinator", "coordinator"),
        "a1": Identity("site", "a1"),
        "b2": Identity("site", "b2"),
        "outsider": Identity("site", "outsider"),
        "alice": Identity("operator", "alice", "admin"),
    }
    return {k: ca.issue(i, validity_days=10, now=NOW) for k, i in identities.items()}


@pytest.fixture(scope="module")
def roster(certs: dict[str, IssuedCertificate]) -> Roster:
    names = ("coordinator", "a1", "b2", "alice")
    entries = tuple(RosterEntry.from_certificate(certs[n].certificate) for n in names)
    return Roster("test consortium", 1, NOW, entries)


def _signed_document(roster: Roster, ca: CertificateAuthority) -> dict[str, object]:
    document: dict[str, object] = json.loads(sign_roster(roster, ca))
    return document


def test_a_signed_roster_round_trips(roster: Roster, ca: CertificateAuthority) -> None:
    data = sign_roster(roster, ca)
    assert load_signed_roster(data, ca.certificate) == roster
    document = json.loads(data)
    assert set(document) == {"roster", "signature"}
    assert document["roster"]["version"] == 1
    assert {e["kind"] for e in document["roster"]["issued"]} == {"coordinator", "site", "operator"}


@pytest.mark.parametrize(
    "tamper",
    [
        lambda r: r.update(version=r["version"] + 1),
        lambda r: r["issued"].pop(1),
        lambda r: r["issued"][1].update(fingerprint="0" * 64),
        lambda r: r["issued"][3].update(role="viewer"),
        lambda r: r["revoked"].append(
            {
                "fingerprint": "1" * 64,
                "kind": "site",
                "name": "a1",
                "revoked_at": "2026-03-01T12:00:00Z",
                "reason": "x",
            }
        ),
    ],
)
def test_a_tampered_roster_is_refused(
    roster: Roster, ca: CertificateAuthority, tamper: object
) -> None:
    document = _signed_document(roster, ca)
    tamper(document["roster"])  # type: ignore[operator]
    with pytest.raises(RosterError, match="signature does not verify"):
        load_signed_roster(json.dumps(document).encode(), ca.certificate)


def test_a_roster_signed_by_another_ca_is_refused(roster: Roster) -> None:
    impostor = CertificateAuthority.create("test consortium", validity_days=30, now=NOW)
    data = sign_roster(roster, impostor)
    genuine = CertificateAuthority.create("test consortium", validity_days=30, now=NOW)
    with pytest.raises(RosterError, match="does not verify with the consortium CA"):
        load_signed_roster(data, genuine.certificate)


def test_a_validly_signed_roster_of_another_consortium_is_refused(
    roster: Roster, ca: CertificateAuthority
) -> None:
    other = Roster("other consortium", 1, NOW, roster.issued)
    signature = ca.issued.key.sign(
        SIGNING_CONTEXT + canonical_bytes(other), ec.ECDSA(hashes.SHA256())
    )
    document = {"roster": other.to_json(), "signature": base64.b64encode(signature).decode()}
    with pytest.raises(RosterError, match="is for consortium 'other consortium'"):
        load_signed_roster(json.dumps(document).encode(), ca.certificate)
    with pytest.raises(RosterError, match="the CA is not"):
        sign_roster(other, ca)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"roster": {}}', 'exactly "roster" and "signature"'),
        (b'{"roster": {}, "signature": "x", "signature": "y"}', "repeats a key"),
        (b'{"roster": [], "signature": "AA=="}', "must be a JSON object"),
        (b'{"roster": {"version": 0}, "signature": "AA=="}', "version must be an integer"),
        (b'{"roster": {"version": true}, "signature": "AA=="}', "version must be an integer"),
    ],
)
def test_malformed_rosters_are_one_line_errors(
    ca: CertificateAuthority, data: bytes, message: str
) -> None:
    with pytest.raises(RosterError, match=message) as caught:
        load_signed_roster(data, ca.certificate)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("fingerprint", "ABC", "64 lower-case hex"),
        ("name", "Not A Name", "must match"),
        ("kind", "root", "kind must be one of"),
        ("not_after", "yesterday", "not an ISO 8601"),
        ("role", "admin", "a site identity has no role"),
    ],
)
def test_bad_entries_are_refused_before_the_signature(
    roster: Roster, ca: CertificateAuthority, field: str, value: str, message: str
) -> None:
    document = _signed_document(roster, ca)
    document["roster"]["issued"][1][field] = value  # type: ignore[index]
    with pytest.raises(RosterError, match=message):
        load_signed_roster(json.dumps(document).encode(), ca.certificate)
    document = _signed_document(roster, ca)
    document["signature"] = "%%%"
    with pytest.raises(RosterError, match="not base64"):
        load_signed_roster(json.dumps(document).encode(), ca.certificate)


def test_check_admits_exactly_the_active_certificate_of_the_identity(
    roster: Roster, certs: dict[str, IssuedCertificate]
) -> None:
    a1 = certs["a1"].certificate
    assert roster.check(Identity("site", "a1"), a1) is None
    assert roster.check(Identity("operator", "alice", "admin"), certs["alice"].certificate) is None
    # signed by the CA, never put on the roster
    reason = roster.check(Identity("site", "outsider"), certs["outsider"].certificate)
    assert reason is not None and "not on the consortium roster" in reason
    # a roster certificate presented for another identity or role
    assert roster.check(Identity("site", "b2"), a1) is not None
    reason = roster.check(Identity("operator", "alice", "viewer"), certs["alice"].certificate)
    assert reason is not None and "not on the consortium roster" in reason
    assert roster.active_site_names() == frozenset({"a1", "b2"})


def test_a_renewal_supersedes_the_old_certificate(
    roster: Roster, ca: CertificateAuthority, certs: dict[str, IssuedCertificate]
) -> None:
    renewed = ca.issue(Identity("site", "a1"), validity_days=10, now=LATER)
    after = roster.with_issued(renewed.certificate, LATER)
    assert after.version == roster.version + 1
    assert [e.fingerprint for e in after.active("a1")] == [
        certificate_fingerprint(renewed.certificate)
    ]
    assert after.check(Identity("site", "a1"), renewed.certificate) is None
    reason = after.check(Identity("site", "a1"), certs["a1"].certificate)
    assert reason == "urn:concordia:site:a1: certificate revoked on 2026-03-04: superseded"
    # survives signing and loading
    loaded = load_signed_roster(sign_roster(after, ca), ca.certificate)
    assert loaded.check(Identity("site", "a1"), certs["a1"].certificate) == reason
    with pytest.raises(RosterError, match="already on the roster"):
        after.with_issued(certs["a1"].certificate, LATER)


def test_a_revoked_certificate_is_refused_with_its_reason(
    roster: Roster, ca: CertificateAuthority, certs: dict[str, IssuedCertificate]
) -> None:
    (b2,) = roster.active("b2")
    after = roster.with_revoked(b2, "left the consortium", LATER)
    assert after.version == 2 and after.active_site_names() == frozenset({"a1"})
    loaded = load_signed_roster(sign_roster(after, ca), ca.certificate)
    reason = loaded.check(Identity("site", "b2"), certs["b2"].certificate)
    assert reason == "urn:concordia:site:b2: certificate revoked on 2026-03-04: left the consortium"
    with pytest.raises(RosterError, match="not active"):
        after.with_revoked(b2, "again", LATER)
    with pytest.raises(RosterError, match="one printable line"):
        roster.with_revoked(b2, "two\nlines", LATER)


def test_canonical_bytes_ignore_the_file_layout(roster: Roster, ca: CertificateAuthority) -> None:
    document = _signed_document(roster, ca)
    compact = json.dumps(document, separators=(",", ":"), sort_keys=False).encode()
    assert load_signed_roster(compact, ca.certificate) == roster
