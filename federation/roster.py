"""The consortium roster: which certificates the consortium has issued, and which it has revoked.

A certificate signed by the consortium CA proves only that the CA signed it. The roster says which
of those certificates are *meant* to be in use: one active certificate per identity, listed by
SHA-256 fingerprint, plus the fingerprints withdrawn (revoked, or superseded by a renewal). This is
what lets the consortium add or revoke one participant without making a new CA.

The roster is signed with the CA's own key, so anyone holding `ca.pem` can verify it and nobody
without `ca.key` can forge one; in particular the coordinator only relays it. Its `version`
increases with every change, so a holder can refuse an older roster replayed to it (rollback) —
but not a newer one that is withheld from it (staleness).

On disk (`roster.json`) and on the wire (`HelloResponse.roster`)::

    {"roster": {...}, "signature": "<base64 DER ECDSA P-256/SHA-256>"}

The signature covers `SIGNING_CONTEXT` followed by the canonical JSON of the "roster" object
(sorted keys, no whitespace, UTF-8): the context keeps a roster signature from ever meaning
anything else the CA key signs.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, cast, get_args

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from federation.identity import (
    Identity,
    IdentityError,
    IdentityKind,
    OperatorRole,
    identity_from_certificate,
)
from federation.pki import CertificateAuthority

ROSTER_FILE = "roster.json"
SIGNING_CONTEXT = b"concordia-roster-v1\n"
MAX_ROSTER_BYTES = 4 * 1024 * 1024
"""A roster lists a few dozen identities; anything this large is not one (it comes off the wire)."""

_FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")


class RosterError(ValueError):
    """A roster is malformed, not signed by the consortium CA, or does not fit; one line."""


@functools.lru_cache(maxsize=4096)
def certificate_fingerprint(cert: x509.Certificate) -> str:
    """Lower-case hex SHA-256 of the certificate's DER: what the roster lists. Kept for the
    certificates seen last (a certificate is immutable): the coordinator checks the caller's on
    every RPC, and re-encoding and hashing it each time was a visible share of a result's cost."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _when(value: object, what: str) -> dt.datetime:
    if not isinstance(value, str):
        raise RosterError(f"roster {what} must be a timestamp string")
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise RosterError(f"roster {what} is not an ISO 8601 timestamp: {value!r}") from None
    if moment.tzinfo is None:
        raise RosterError(f"roster {what} has no time zone: {value!r}")
    return moment


def _fingerprint(value: object, what: str) -> str:
    if not isinstance(value, str) or not _FINGERPRINT_RE.match(value):
        raise RosterError(f"roster {what} fingerprint must be 64 lower-case hex digits")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise RosterError(f"roster {what} must be a non-empty string")
    return value


@dataclass(frozen=True)
class RosterEntry:
    """One identity the consortium issued, and the one certificate it is meant to use."""

    kind: IdentityKind
    name: str
    role: OperatorRole | None
    fingerprint: str
    not_after: dt.datetime

    @property
    def identity(self) -> Identity:
        """Who this entry is, in the form the coordinator authorises and sites check against."""
        return Identity(self.kind, self.name, self.role)

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> RosterEntry:
        """The entry for a certificate the CA just issued: identity from its SAN, fingerprint and
        expiry from the certificate itself, so the roster cannot name a different one."""
        identity = identity_from_certificate(cert)
        return cls(
            identity.kind,
            identity.name,
            identity.role,
            certificate_fingerprint(cert),
            cert.not_valid_after_utc,
        )


@dataclass(frozen=True)
class Revocation:
    """A certificate withdrawn from use: revoked outright, or superseded by a renewal."""

    fingerprint: str
    kind: IdentityKind
    name: str
    revoked_at: dt.datetime
    reason: str


@dataclass(frozen=True)
class Roster:
    """One version of the consortium roster. Immutable: changes make the next version."""

    consortium: str
    version: int
    issued_at: dt.datetime
    issued: tuple[RosterEntry, ...] = ()
    revoked: tuple[Revocation, ...] = ()

    def active(self, name: str, kind: IdentityKind | None = None) -> list[RosterEntry]:
        """The active entries called `name` (of `kind`, if given)."""
        return [e for e in self.issued if e.name == name and kind in (None, e.kind)]

    def revocations(self, name: str) -> list[Revocation]:
        """Everything withdrawn from `name`, so a refusal can say when and why."""
        return [r for r in self.revoked if r.name == name]

    def active_site_names(self) -> frozenset[str]:
        """The sites that may take part: those with an active certificate."""
        return frozenset(e.name for e in self.issued if e.kind == "site")

    def check(self, identity: Identity, certificate: x509.Certificate) -> str | None:
        """None if `certificate` is the active roster certificate of `identity`, else why not."""
        fingerprint = certificate_fingerprint(certificate)
        revocation = self._revoked_by_fingerprint.get(fingerprint)
        if revocation is not None:
            return (
                f"{identity.uri}: certificate revoked on "
                f"{revocation.revoked_at.date().isoformat()}: {revocation.reason}"
            )
        if any(e.identity == identity for e in self._issued_by_fingerprint.get(fingerprint, ())):
            return None
        return f"{identity.uri}: certificate is not on the consortium roster (v{self.version})"

    @functools.cached_property
    def _revoked_by_fingerprint(self) -> dict[str, Revocation]:
        """The first revocation of each fingerprint: `check` runs on every RPC, and scanning the
        lists made each call O(roster), each stage O(n²) at n sites."""
        index: dict[str, Revocation] = {}
        for revocation in self.revoked:
            index.setdefault(revocation.fingerprint, revocation)
        return index

    @functools.cached_property
    def _issued_by_fingerprint(self) -> dict[str, list[RosterEntry]]:
        index: dict[str, list[RosterEntry]] = {}
        for entry in self.issued:
            index.setdefault(entry.fingerprint, []).append(entry)
        return index

    def with_issued(self, cert: x509.Certificate, now: dt.datetime) -> Roster:
        """The next version, with `cert` as its identity's active certificate; a certificate it
        replaces is listed as revoked, reason "superseded"."""
        entry = RosterEntry.from_certificate(cert)
        if any(e.fingerprint == entry.fingerprint for e in self.issued) or any(
            r.fingerprint == entry.fingerprint for r in self.revoked
        ):
            raise RosterError(f"certificate {entry.fingerprint[:16]}… is already on the roster")
        old = [e for e in self.issued if (e.kind, e.name) == (entry.kind, entry.name)]
        revoked = tuple(Revocation(e.fingerprint, e.kind, e.name, now, "superseded") for e in old)
        keep = tuple(e for e in self.issued if e not in old)
        return self._next(now, issued=(*keep, entry), revoked=(*self.revoked, *revoked))

    def with_revoked(self, entry: RosterEntry, reason: str, now: dt.datetime) -> Roster:
        """The next version, with `entry`'s certificate revoked and the identity inactive."""
        if entry not in self.issued:
            raise RosterError(f"{entry.identity.uri} is not active on the roster")
        if not reason.strip() or not reason.isprintable() or len(reason) > 200:
            raise RosterError("a revocation reason is one printable line of at most 200 characters")
        revocation = Revocation(entry.fingerprint, entry.kind, entry.name, now, reason.strip())
        issued = tuple(e for e in self.issued if e != entry)
        return self._next(now, issued=issued, revoked=(*self.revoked, revocation))

    def _next(
        self, now: dt.datetime, issued: tuple[RosterEntry, ...], revoked: tuple[Revocation, ...]
    ) -> Roster:
        return replace(
            self, version=self.version + 1, issued_at=now, issued=issued, revoked=revoked
        )

    # ------------------------------------------------------------------ encoding
    def to_json(self) -> dict[str, Any]:
        """The "roster" object of `roster.json`; its canonical bytes are what the CA signs."""
        return {
            "consortium": self.consortium,
            "version": self.version,
            "issued_at": _iso(self.issued_at),
            "issued": [_encode(e) for e in self.issued],
            "revoked": [_encode(r) for r in self.revoked],
        }

    @classmethod
    def from_json(cls, data: object) -> Roster:
        """Parse and validate; every problem is a one-line RosterError."""
        if not isinstance(data, dict):
            raise RosterError("roster must be a JSON object")
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise RosterError("roster version must be an integer >= 1")
        issued = tuple(_entry(e, i) for i, e in enumerate(_list(data, "issued")))
        revoked = tuple(_revocation(r, i) for i, r in enumerate(_list(data, "revoked")))
        names = [(e.kind, e.name) for e in issued]
        if len(set(names)) != len(names):
            raise RosterError("roster lists more than one active certificate for an identity")
        prints = [e.fingerprint for e in issued] + [r.fingerprint for r in revoked]
        if len(set(prints)) != len(prints):
            raise RosterError("roster lists a certificate fingerprint twice")
        return cls(
            _text(data.get("consortium"), "consortium"),
            version,
            _when(data.get("issued_at"), "issued_at"),
            issued,
            revoked,
        )


def _encode(item: RosterEntry | Revocation) -> dict[str, Any]:
    values = {f.name: getattr(item, f.name) for f in fields(item)}
    return {k: _iso(v) if isinstance(v, dt.datetime) else v for k, v in values.items()}


def _list(data: Mapping[str, object], key: str) -> list[object]:
    value = data.get(key)
    if not isinstance(value, list):
        raise RosterError(f"roster {key} must be a list")
    return value


def _kind(value: object, what: str) -> IdentityKind:
    if value not in get_args(IdentityKind):
        raise RosterError(f"roster {what} kind must be one of {get_args(IdentityKind)}")
    return cast(IdentityKind, value)


def _entry(item: object, index: int) -> RosterEntry:
    what = f"issued[{index}]"
    if not isinstance(item, dict):
        raise RosterError(f"roster {what} must be an object")
    kind = _kind(item.get("kind"), what)
    role = item.get("role")
    try:
        identity = Identity(kind, _text(item.get("name"), f"{what} name"), cast(Any, role))
    except IdentityError as exc:
        raise RosterError(f"roster {what}: {exc}") from None
    return RosterEntry(
        identity.kind,
        identity.name,
        identity.role,
        _fingerprint(item.get("fingerprint"), what),
        _when(item.get("not_after"), f"{what} not_after"),
    )


def _revocation(item: object, index: int) -> Revocation:
    what = f"revoked[{index}]"
    if not isinstance(item, dict):
        raise RosterError(f"roster {what} must be an object")
    return Revocation(
        _fingerprint(item.get("fingerprint"), what),
        _kind(item.get("kind"), what),
        _text(item.get("name"), f"{what} name"),
        _when(item.get("revoked_at"), f"{what} revoked_at"),
        _text(item.get("reason"), f"{what} reason"),
    )


def canonical_bytes(roster: Roster) -> bytes:
    """The exact bytes the signature covers (after SIGNING_CONTEXT)."""
    text = json.dumps(roster.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def ca_consortium(ca_certificate: x509.Certificate) -> str | None:
    """The consortium a CA certificate belongs to (its O attribute, as `pki` writes it)."""
    names = ca_certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(names[0].value) if len(names) == 1 else None


def sign_roster(roster: Roster, ca: CertificateAuthority) -> bytes:
    """The signed roster file: `{"roster": …, "signature": …}` as UTF-8 JSON."""
    if roster.consortium != ca_consortium(ca.certificate):
        raise RosterError(f"roster is for {roster.consortium!r}, the CA is not")
    signature = ca.issued.key.sign(
        SIGNING_CONTEXT + canonical_bytes(roster), ec.ECDSA(hashes.SHA256())
    )
    document = {"roster": roster.to_json(), "signature": base64.b64encode(signature).decode()}
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise RosterError("roster JSON repeats a key")
    return dict(pairs)


def load_signed_roster(data: bytes, ca_certificate: x509.Certificate) -> Roster:
    """Verify a signed roster with the consortium CA certificate and parse it."""
    if len(data) > MAX_ROSTER_BYTES:
        raise RosterError(f"roster is {len(data)} bytes, more than {MAX_ROSTER_BYTES}")
    try:
        document = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RosterError(f"roster is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or set(document) != {"roster", "signature"}:
        raise RosterError('roster file must hold exactly "roster" and "signature"')
    roster = Roster.from_json(document["roster"])
    try:
        signature = base64.b64decode(str(document["signature"]), validate=True)
    except (binascii.Error, ValueError):
        raise RosterError("roster signature is not base64") from None
    key = ca_certificate.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise RosterError("the CA key is not an ECDSA key")
    try:
        key.verify(signature, SIGNING_CONTEXT + canonical_bytes(roster), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise RosterError("roster signature does not verify with the consortium CA") from None
    expected = ca_consortium(ca_certificate)
    if roster.consortium != expected:
        raise RosterError(f"roster is for consortium {roster.consortium!r}, not {expected!r}")
    return roster
