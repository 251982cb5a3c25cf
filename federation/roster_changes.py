"""Changing an existing consortium without a new CA: add a site, renew or revoke an identity.

Each change issues (or withdraws) one certificate with the consortium CA, re-signs the roster
with a higher version, and writes it to `OUT/ca/roster.json`, the coordinator kit and every kit
folder under OUT (a real deployment copies it to the coordinator, which hands it to the sites at
Hello). Changes are serialised by a lock on the CA key file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509

from federation.identity import Identity, IdentityKind
from federation.provisioning import (
    CA_KEY,
    CLIENT_CERT,
    CLIENT_KEY,
    OPERATOR_CONFIG,
    SITE_CONFIG,
    ProvisionError,
    issue_site_kit,
    load_ca,
    operator_config_text,
    publish_roster,
    read_roster,
    write_kit,
)
from federation.roster import (
    Roster,
    RosterEntry,
    RosterError,
    certificate_fingerprint,
)


@dataclass(frozen=True)
class RosterChange:
    """What add_site, renew or revoke did."""

    action: Literal["add-site", "renew", "revoke"]
    identity: Identity
    version: int
    fingerprint: str
    """The new certificate's (add-site, renew) or the revoked one's (revoke)."""
    kit_dir: Path | None = None
    superseded: str | None = None
    written: tuple[Path, ...] = ()


@contextlib.contextmanager
def _roster_lock(out: Path) -> Iterator[None]:
    """Serialise roster changes (two at once would both write version n+1)."""
    fd = os.open(out / "ca" / CA_KEY, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _coordinator_address(out: Path, prefer: Path | None = None) -> str:
    """The address the existing kits dial, for the starter config of a new kit."""
    configs = [prefer] if prefer is not None else []
    configs += sorted((out / "sites").glob(f"*/{SITE_CONFIG}"))
    configs += sorted((out / "operators").glob(f"*/{OPERATOR_CONFIG}"))
    for config in configs:
        try:
            table = tomllib.loads(config.read_text(encoding="utf-8")).get("coordinator")
        except (OSError, tomllib.TOMLDecodeError):
            continue
        if isinstance(table, dict) and isinstance(table.get("address"), str):
            return str(table["address"])
    raise ProvisionError(
        f"cannot tell the coordinator address from the kits under {out}; pass it explicitly"
    )


def _read_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _one_active(roster: Roster, name: str, kind: IdentityKind | None, verb: str) -> RosterEntry:
    entries = roster.active(name, kind)
    if len(entries) > 1:
        raise ProvisionError(f"{name!r} is both a site and an operator; say which to {verb}")
    if entries:
        if entries[0].kind == "coordinator":
            raise ProvisionError(f"cannot {verb} the coordinator's certificate this way")
        return entries[0]
    past = [r for r in roster.revocations(name) if kind in (None, r.kind)]
    if past:
        when = past[-1].revoked_at.date().isoformat()
        raise ProvisionError(f"{name!r} was already revoked on {when}: {past[-1].reason}")
    raise ProvisionError(
        f"{name!r} is not on the roster of consortium {roster.consortium!r} (v{roster.version})"
    )


def add_site(
    out: Path,
    site_id: str,
    *,
    coordinator_address: str | None = None,
    validity_days: int = 365,
    now: dt.datetime | None = None,
) -> RosterChange:
    """Issue a kit for a new site from the existing CA and add it to the roster.

    The name must not be active on the roster, and its kit folder must not exist (a revoked site
    can be added again, with a new certificate, once its old kit folder is removed).
    """
    identity = Identity("site", site_id)  # validates the id
    ca = load_ca(out / "ca")
    with _roster_lock(out):
        roster = read_roster(out, ca.certificate)
        if roster.active(site_id):
            raise ProvisionError(
                f"{site_id!r} is already on the roster (v{roster.version}); use renew for a new"
                " certificate"
            )
        kit_dir = out / "sites" / site_id
        if kit_dir.exists():
            raise ProvisionError(f"{kit_dir} already exists; remove it first")
        issue_site_kit(
            ca,
            site_id,
            kit_dir,
            coordinator_address=coordinator_address or _coordinator_address(out),
            consortium=roster.consortium,
            validity_days=validity_days,
            now=now,
        )
        cert = _read_certificate(kit_dir / CLIENT_CERT)
        updated = roster.with_issued(cert, now or dt.datetime.now(dt.UTC))
        written = publish_roster(out, updated, ca)
    fingerprint = certificate_fingerprint(cert)
    return RosterChange("add-site", identity, updated.version, fingerprint, kit_dir, None, written)


def renew(
    out: Path,
    name: str,
    *,
    kind: IdentityKind | None = None,
    validity_days: int = 365,
    now: dt.datetime | None = None,
) -> RosterChange:
    """A new key and certificate for an active site or operator; its config file is kept, and
    the old certificate is revoked on the roster as superseded."""
    ca = load_ca(out / "ca")
    with _roster_lock(out):
        roster = read_roster(out, ca.certificate)
        entry = _one_active(roster, name, kind, "renew")
        if entry.kind == "site":
            kit_dir = out / "sites" / name
            address = _coordinator_address(out, prefer=kit_dir / SITE_CONFIG)
            issue_site_kit(
                ca,
                name,
                kit_dir,
                coordinator_address=address,
                consortium=roster.consortium,
                validity_days=validity_days,
                force=True,
                now=now,
            )
        else:
            kit_dir = out / "operators" / name
            address = _coordinator_address(out, prefer=kit_dir / OPERATOR_CONFIG)
            issued = ca.issue(entry.identity, validity_days=validity_days, now=now)
            write_kit(
                kit_dir,
                ca,
                issued,
                (CLIENT_CERT, CLIENT_KEY, OPERATOR_CONFIG),
                operator_config_text(roster.consortium, entry.identity, address),
                keep_config=True,
            )
        cert = _read_certificate(kit_dir / CLIENT_CERT)
        updated = roster.with_issued(cert, now or dt.datetime.now(dt.UTC))
        written = publish_roster(out, updated, ca)
    return RosterChange(
        "renew",
        entry.identity,
        updated.version,
        certificate_fingerprint(cert),
        kit_dir,
        entry.fingerprint,
        written,
    )


def revoke(
    out: Path,
    name: str,
    reason: str = "revoked by the consortium",
    *,
    kind: IdentityKind | None = None,
    now: dt.datetime | None = None,
) -> RosterChange:
    """Revoke the active certificate of a site or operator; the coordinator then refuses it."""
    ca = load_ca(out / "ca")
    with _roster_lock(out):
        roster = read_roster(out, ca.certificate)
        entry = _one_active(roster, name, kind, "revoke")
        try:
            updated = roster.with_revoked(entry, reason, now or dt.datetime.now(dt.UTC))
        except RosterError as exc:
            raise ProvisionError(str(exc)) from exc
        written = publish_roster(out, updated, ca)
    return RosterChange(
        "revoke", entry.identity, updated.version, entry.fingerprint, None, None, written
    )
