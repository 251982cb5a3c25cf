"""The other sites' certificates this site holds, filed under the fingerprint it computed itself.

A secure-aggregation session names its participants by certificate fingerprint (SHA-256 of the
DER, as the roster lists them), not by the certificate: a site fetches each certificate once
(`GetCertificates`) instead of receiving every participant's certificate in every session, which
at n sites is n² certificates per round.

Nothing here is trusted because of where it came from. A certificate is filed under the
fingerprint *this site* computes from its bytes, so looking a fingerprint up can only ever give
that exact certificate; whether it may be in a session is decided at session time by the same
checks as always (CA-issued, its name is the participant's site, and it is the roster's active
certificate of that site: `SecaggAdapter._verify_participants`). A coordinator that answers a
fetch with some other certificate only files that one under its own fingerprint, where no session
of a roster-listed fingerprint will look. Certificates are public: they are stored in the clear.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from federation.identity import IdentityError, load_certificate
from federation.roster import certificate_fingerprint
from site_agent.sqlite_state import SqliteComponent

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS peer_certificates (
        sha256 TEXT PRIMARY KEY,
        pem    TEXT NOT NULL
    )""",
)

MAX_HELD = 10_000
"""More certificates than any consortium has sites (renewals included): a fetch answered with
more is not kept beyond this, so a coordinator cannot grow the site's state without bound."""


class PeerCertificates(SqliteComponent):
    """Certificates by their own fingerprint, in the site's state database."""

    def __init__(self, conn_or_path: sqlite3.Connection | str | Path) -> None:
        super().__init__(conn_or_path, _SCHEMA)

    def get(self, sha256: str) -> str | None:
        """The certificate whose DER hashes to `sha256` (hex), if this site holds it."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT pem FROM peer_certificates WHERE sha256 = ?", (sha256.lower(),)
            ).fetchone()
        return None if row is None else str(row[0])

    def missing(self, wanted: Iterable[str]) -> list[str]:
        """The fingerprints of `wanted` this site does not hold, in order, once each."""
        out: list[str] = []
        for sha256 in wanted:
            if sha256 and sha256 not in out and self.get(sha256) is None:
                out.append(sha256)
        return out

    def add(self, pems: Iterable[str]) -> list[str]:
        """File each parseable certificate under its own fingerprint; returns those fingerprints.
        Unparseable ones are skipped (a session naming them fails its checks later, with the
        reason)."""
        filed: list[str] = []
        with self._transaction() as conn:
            held = int(conn.execute("SELECT COUNT(*) FROM peer_certificates").fetchone()[0])
            for pem in pems:
                try:
                    sha256 = certificate_fingerprint(load_certificate(pem))
                except (IdentityError, ValueError):
                    continue
                if held >= MAX_HELD:
                    break
                inserted = conn.execute(
                    "INSERT OR IGNORE INTO peer_certificates (sha256, pem) VALUES (?, ?)",
                    (sha256, pem),
                ).rowcount
                held += inserted
                filed.append(sha256)
        return filed
