"""The hash chain's arithmetic: entries, their hashes, and walking a chain to check it.

Sans-I/O (rows in, a verdict out), so the same walk checks a live database and a copy, and
every tampering case is a unit test over plain rows (tests/unit/federation/test_audit.py). The
database side is federation/audit.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from federation.audit_head import AuditError

GENESIS_HASH = "0" * 64
"""The prev_hash of the first entry."""


@dataclass(frozen=True)
class AuditEntry:
    """One audit record as stored."""

    seq: int
    ts: float
    actor: str
    action: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    def to_json_dict(self) -> dict[str, Any]:
        """Plain dict for `--output json` and the Admin API."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "actor": self.actor,
            "action": self.action,
            "detail": self.detail,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class AuditVerification:
    """Result of walking the chain: ok, entries checked, the head hash, the first problem.

    `expected_head_seq` is the seq at which an expected head (`verify(expect_head=…)`) was found
    in the chain (entries after it were appended since that head was recorded), else None.
    """

    ok: bool
    checked: int
    head_seq: int
    head_hash: str
    problem: str | None
    expected_head_seq: int | None = None


def canonical_json(value: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces, no NaN) so the hash is reproducible."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def entry_hash(
    seq: int, ts: float, actor: str, action: str, detail: Mapping[str, Any], prev_hash: str
) -> str:
    """SHA-256 (hex) chaining an entry to its predecessor."""
    body = canonical_json(
        {
            "seq": seq,
            "ts": ts,
            "actor": actor,
            "action": action,
            "detail": detail,
            "prev_hash": prev_hash,
        }
    )
    return hashlib.sha256(prev_hash.encode("ascii") + b"\n" + body.encode("utf-8")).hexdigest()


def against_expected(
    checked: int,
    last_hash: str,
    expect_head: str | None,
    expect_min_seq: int | None,
    found: int | None,
) -> str | None:
    """The problem, if an intact chain does not match a head recorded elsewhere."""
    if expect_head is None and expect_min_seq is None:
        return None
    minimum = expect_min_seq or 0
    shortened = checked < minimum or (checked == 0 and expect_head not in (None, GENESIS_HASH))
    if shortened:
        expected = f"seq {minimum}" if minimum else f"hash {str(expect_head)[:12]}…"
        return (
            "an empty or shortened chain does not match an expected head: the chain has"
            f" {checked} entries, the expected head is {expected}; entries were removed from"
            " the end or the log was emptied or replaced"
        )
    if expect_head is not None and found is None:
        return (
            f"the expected head {expect_head[:12]}… is not in the chain (its head is seq"
            f" {checked}, hash {last_hash[:12]}…): the log was replaced or rewritten, or cut"
            " back to before the expected head"
        )
    return None


def walk(rows: Iterable[Any], want: str | None = None) -> tuple[int, str, str | None, int | None]:
    """Check seq continuity, prev-hash links and every hash (recomputed from content, the last
    entry's too); returns (checked, last hash, problem, seq whose hash is `want` or None)."""
    expected_seq = 1
    prev_hash = GENESIS_HASH
    checked = 0
    found = 0 if want == GENESIS_HASH else None
    for row in rows:
        try:
            seq = int(row[0])
        except (TypeError, ValueError):
            return checked, prev_hash, f"seq {expected_seq}: seq is not an integer", found
        if seq != expected_seq:
            return (
                checked,
                prev_hash,
                f"seq {expected_seq} is missing (next entry is seq {seq})",
                found,
            )
        try:
            entry = row_to_entry(row)
            recomputed = entry_hash(
                seq, entry.ts, entry.actor, entry.action, entry.detail, prev_hash
            )
        except (AuditError, TypeError, ValueError) as exc:
            return checked, prev_hash, f"seq {seq}: {exc}", found
        if entry.prev_hash != prev_hash:
            return (
                checked,
                prev_hash,
                (
                    f"seq {seq} does not link to seq {seq - 1} (prev_hash mismatch):"
                    " an entry was reordered, replaced or removed"
                ),
                found,
            )
        if recomputed != entry.hash:
            return (
                checked,
                prev_hash,
                f"seq {seq} was edited (its hash does not match its content)",
                found,
            )
        prev_hash = entry.hash
        checked += 1
        expected_seq += 1
        if want is not None and entry.hash == want:
            found = seq
    return checked, prev_hash, None, found


def row_to_entry(row: tuple[Any, ...]) -> AuditEntry:
    try:
        detail = json.loads(row[4])
    except (TypeError, ValueError) as exc:
        raise AuditError(f"detail is not valid JSON: {exc}") from exc
    if not isinstance(detail, dict):
        raise AuditError("detail is not a JSON object")
    return AuditEntry(
        seq=int(row[0]),
        ts=float(row[1]),
        actor=str(row[2]),
        action=str(row[3]),
        detail=detail,
        prev_hash=str(row[5]),
        hash=str(row[6]),
    )
