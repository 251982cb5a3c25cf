"""The site's copy of the consortium roster: which peer certificates it will take part with.

The roster (`federation/roster.py`) is signed with the consortium CA key, so the coordinator can
relay it (`HelloResponse.roster`) but cannot forge or edit one. A site keeps the newest roster it
has seen in `state_dir/roster.json` and uses it to refuse secure-aggregation participants whose
certificate was never issued to them, was superseded by a renewal, or was revoked — even though
the CA signed it, so it would pass `verify_peer_certificate`.

Limits, by design of a relayed roster: a coordinator cannot roll a site back to an older roster
(versions only go up here), but it can *withhold* a newer one, so a site may act on a stale roster
until it reconnects to an honest coordinator or its kit's roster.json is replaced. The kit's copy
is trusted exactly as much as a relayed one: it too must verify with the CA.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from federation.fsmodes import write_file_atomic
from federation.identity import Identity, IdentityError, load_certificate
from federation.roster import ROSTER_FILE, Roster, RosterError, load_signed_roster

STATE_MODE = 0o600


def describe_change(old: Roster, new: Roster) -> str:
    """One line: what changed between two rosters, e.g. `v2 -> v3: revoked site b (left)`, for
    the log and the `roster_updated` audit entry."""
    before = {(e.kind, e.name): e for e in old.issued}
    after = {(e.kind, e.name): e for e in new.issued}
    reasons = {r.fingerprint: r.reason for r in new.revoked}
    changes = [f"added {k} {n}" for k, n in sorted(after.keys() - before.keys())]
    changes += [
        f"renewed {k} {n}"
        for (k, n) in sorted(after.keys() & before.keys())
        if after[(k, n)].fingerprint != before[(k, n)].fingerprint
    ]
    changes += [
        f"revoked {k} {n} ({reasons.get(before[(k, n)].fingerprint, 'no reason given')})"
        for (k, n) in sorted(before.keys() - after.keys())
    ]
    return f"roster v{old.version} -> v{new.version}: " + ("; ".join(changes) or "no changes")


class SiteRoster:
    """The newest valid roster among the kit's roster.json and the one kept in `state_dir`.

    Copies that are missing are skipped; copies that do not verify are skipped and listed in
    `problems` (for the agent to log and audit). With no valid copy at all it raises RosterError.
    """

    def __init__(self, state_dir: Path, kit_roster: Path, ca_certificate: x509.Certificate) -> None:
        self.state_path = state_dir / ROSTER_FILE
        self._ca = ca_certificate
        self.problems: list[str] = []
        found: list[Roster] = []
        for path in (kit_roster, self.state_path):
            try:
                found.append(load_signed_roster(path.read_bytes(), ca_certificate))
            except FileNotFoundError:
                continue
            except OSError as exc:
                self.problems.append(f"{path}: cannot read: {exc.strerror}")
            except RosterError as exc:
                self.problems.append(f"{path}: {exc}")
        if not found:
            detail = "; ".join(self.problems) or f"{kit_roster} is missing"
            raise RosterError(f"no valid consortium roster: {detail}")
        self._roster = max(found, key=lambda r: r.version)

    @property
    def roster(self) -> Roster:
        """The newest valid roster this site has seen: the one participants are checked against."""
        return self._roster

    @property
    def version(self) -> int:
        """Its version: only a higher one from the coordinator replaces it (no rollback)."""
        return self._roster.version

    def offer(self, data: bytes) -> str | None:
        """Take a signed roster from the coordinator if it is newer; what changed, or None.

        Empty `data` (a coordinator that sends none) and versions not above the current one are
        ignored (None): rollback is refused. A roster that does not verify with the CA, or is for
        another consortium, raises RosterError. An accepted one is kept in state_dir (0600).
        """
        if not data:
            return None
        offered = load_signed_roster(data, self._ca)
        if offered.consortium != self._roster.consortium:
            raise RosterError(
                f"offered roster is for {offered.consortium!r}, not {self._roster.consortium!r}"
            )
        if offered.version <= self._roster.version:
            return None
        write_file_atomic(self.state_path, data, STATE_MODE)
        previous, self._roster = self._roster, offered
        return describe_change(previous, offered)

    def check_participant(self, site_name: str, certificate_pem: str) -> None:
        """Raise RosterError unless `certificate_pem` is `site_name`'s active roster certificate:
        a CA-signed certificate that was superseded or revoked is refused too."""
        try:
            identity = Identity("site", site_name)
            certificate = load_certificate(certificate_pem)
        except IdentityError as exc:
            raise RosterError(f"participant {site_name!r}: {exc}") from None
        reason = self._roster.check(identity, certificate)
        if reason is not None:
            raise RosterError(reason)
