"""The audit chain's head, kept apart from the database so a cut or replaced chain shows.

After each committed append (or, deferred, at `flush_head`: a site agent every second, the
coordinator every tick) an audit log writes its head `{seq, hash, ts}` to a head file beside the
database (`audit.sqlite` → `audit.sqlite.head`, replaced atomically, mode 0600). An operator
ships copies elsewhere; `fedctl audit verify --head-file COPY` then fails on a chain
that no longer contains that head (federation/audit.py, "Limits").
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.fsmodes import write_private_file_atomic

HEAD_FILE_SUFFIX = ".head"
"""The head file sits beside its database: `audit.sqlite` → `audit.sqlite.head`."""

HASH_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class AuditError(Exception):
    """The audit database cannot be used (not an audit database, bad entry input)."""


@dataclass(frozen=True)
class AuditHead:
    """A chain head as written to a head file: the last entry's seq, hash and timestamp."""

    seq: int
    hash: str
    ts: float | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The head as the head file and `fedctl audit verify --output json` spell it, so a copy
        kept elsewhere can be compared field by field."""
        return {"seq": self.seq, "hash": self.hash, "ts": self.ts}


def head_file_path(database: str | Path) -> Path:
    """Where the head file of the audit database at `database` lives."""
    return Path(str(database) + HEAD_FILE_SUFFIX)


def write_head_file(path: str | Path, head: AuditHead) -> None:
    """Replace the head file atomically (mode 0600) with `{"seq", "hash", "ts"}` JSON."""
    text = json.dumps(head.to_json_dict(), sort_keys=True) + "\n"
    write_private_file_atomic(path, text.encode("ascii"))


def read_head_file(path: str | Path) -> AuditHead:
    """Read a head file (or a shipped copy of one); AuditError if missing or malformed."""
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AuditError(f"head file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditError(f"cannot read head file {path}: {exc}") from None
    try:
        data = json.loads(raw)
    except ValueError:
        raise AuditError(f"head file {path} is not JSON") from None
    if not isinstance(data, dict):
        raise AuditError(f"head file {path} is not a JSON object")
    seq, digest, ts = data.get("seq"), data.get("hash"), data.get("ts")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise AuditError(f"head file {path}: seq must be an integer >= 0")
    if not isinstance(digest, str) or not HASH_PATTERN.match(digest):
        raise AuditError(f"head file {path}: hash must be 64 lowercase hex digits")
    if ts is not None and (
        isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts)
    ):
        raise AuditError(f"head file {path}: ts must be a number")
    return AuditHead(seq, digest, None if ts is None else float(ts))
