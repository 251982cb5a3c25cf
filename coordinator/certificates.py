"""The sites' certificates by fingerprint: what a session names its participants by, and what a
site fetches once (`GetCertificates`) instead of receiving every participant's certificate in
every session (n² certificates per round at n sites).

The certificates are the ones sites presented at Hello (the store's `sites` table). Fingerprints
are SHA-256 over the DER, as the roster lists them, computed once per certificate text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from coordinator.store import CoordinatorStore
from federation.identity import IdentityError, load_certificate
from federation.roster import certificate_fingerprint

MAX_REQUESTED = 1_000
"""Fingerprints one GetCertificates may ask for: more than a session has participants."""

_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


class CertificateRequestError(ValueError):
    """A GetCertificates request that is not a list of fingerprints; one line."""


class CertificateIndex:
    """Fingerprint of a site's current certificate, and certificates by fingerprint."""

    def __init__(self, store: CoordinatorStore) -> None:
        self.store = store
        self._fingerprints: dict[str, str] = {}  # certificate PEM -> its fingerprint

    def _fingerprint_of(self, pem: str) -> str | None:
        known = self._fingerprints.get(pem)
        if known is None:
            try:
                known = certificate_fingerprint(load_certificate(pem))
            except (IdentityError, ValueError):
                return None
            self._fingerprints[pem] = known
        return known

    def fingerprint(self, site: str) -> str | None:
        """The fingerprint of the certificate `site` last said Hello with (None: unknown)."""
        pem = self.store.certificate(site)
        return None if pem is None else self._fingerprint_of(pem)

    def certificates(self, wanted: Iterable[str]) -> list[tuple[str, str, str]]:
        """(site, PEM, fingerprint) of every site whose current certificate is wanted.
        Raises CertificateRequestError for anything but ≤ MAX_REQUESTED hex fingerprints."""
        asked = list(wanted)
        if len(asked) > MAX_REQUESTED:
            raise CertificateRequestError(
                f"asked for {len(asked)} certificates; at most {MAX_REQUESTED} per request"
            )
        for sha256 in asked:
            if not _FINGERPRINT.match(sha256):
                raise CertificateRequestError(
                    "a fingerprint is 64 lower-case hex digits (SHA-256 of the DER certificate)"
                )
        wanted_set = set(asked)
        found: list[tuple[str, str, str]] = []
        for row in self.store.sites():
            held = self._fingerprint_of(row.certificate_pem)
            if held is not None and held in wanted_set:
                found.append((row.site_id, row.certificate_pem, held))
        return found
