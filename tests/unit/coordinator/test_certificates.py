"""The coordinator's certificate index: fingerprints sessions name participants by, and the
validated GetCertificates lookup."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from coordinator.certificates import MAX_REQUESTED, CertificateIndex, CertificateRequestError
from coordinator.store import CoordinatorStore
from federation.identity import Identity, load_certificate
from federation.pki import CertificateAuthority
from federation.roster import certificate_fingerprint

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


def test_fingerprints_and_lookup_follow_the_certificate_a_site_said_hello_with(
    tmp_path: Path,
) -> None:
    ca = CertificateAuthority.create("c", validity_days=30, now=NOW)
    pems = {
        n: ca.issue(Identity("site", n), validity_days=9, now=NOW).certificate_pem.decode()
        for n in ("site-a", "site-b")
    }
    store = CoordinatorStore(tmp_path / "c.sqlite", clock=lambda: 0.0)
    for site, pem in pems.items():
        store.record_hello(site, pem, "1.0", {})
    index = CertificateIndex(store)
    fp = {n: certificate_fingerprint(load_certificate(p)) for n, p in pems.items()}
    assert index.fingerprint("site-a") == fp["site-a"] and index.fingerprint("nobody") is None
    assert index.certificates([fp["site-b"], "0" * 64]) == [
        ("site-b", pems["site-b"], fp["site-b"])
    ]
    renewed = ca.issue(Identity("site", "site-b"), validity_days=9, now=NOW).certificate_pem
    store.record_hello("site-b", renewed.decode(), "1.0", {})  # a renewed kit says Hello
    assert index.fingerprint("site-b") != fp["site-b"]
    assert index.certificates([fp["site-b"]]) == []  # the old one is no longer served


@pytest.mark.parametrize(
    "wanted",
    [["not-hex"], ["A" * 64], ["0" * 63], ["0" * 64] * (MAX_REQUESTED + 1)],
)
def test_a_request_that_is_not_fingerprints_is_refused(tmp_path: Path, wanted: list[str]) -> None:
    index = CertificateIndex(CoordinatorStore(tmp_path / "c.sqlite", clock=lambda: 0.0))
    with pytest.raises(CertificateRequestError):
        index.certificates(wanted)
