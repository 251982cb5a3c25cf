"""Patient pseudonyms: HMAC-SHA256 of the patient id under a secret that never leaves the site.

The secret is created once (random, 32 bytes) in `state_dir/pseudonym_key`, mode 0600, like the
split salt; losing it makes every stored pseudonym (erasure list, records of processing)
unmatchable, so it is part of the site's state backup. A pseudonym is 64 hex characters; the
raw id exists only in memory while a row is read, and in the operator's own command line.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from federation.configfile import ConfigError
from federation.fsmodes import PRIVATE_FILE_MODE, ensure_private_dir

PSEUDONYM_KEY_FILE = "pseudonym_key"
_DOMAIN = b"concordia/patient-pseudonym/v1\x00"
PSEUDONYM_PATTERN = re.compile(r"^[0-9a-f]{64}$")


def pseudonym_key(state_dir: Path, *, create: bool = True) -> bytes | None:
    """The site's pseudonymisation secret, created once with mode 0600 (None if absent and
    `create` is false: a read-only command on a site that never ran)."""
    path = Path(state_dir) / PSEUDONYM_KEY_FILE
    try:
        if not path.exists():
            if not create:
                return None
            ensure_private_dir(state_dir)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
            except FileExistsError:  # another process created it first
                pass
            else:
                with os.fdopen(fd, "w", encoding="ascii") as handle:
                    handle.write(secrets.token_hex(32) + "\n")
        text = path.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise ConfigError(
            f"{path}: the pseudonym secret cannot be created or read: {exc}"
        ) from None
    if len(text) < 32:
        raise ConfigError(f"{path}: the pseudonym secret is too short (restore it from backup)")
    return text.encode("ascii")


def pseudonymise(key: bytes, patient_id: str) -> str:
    """The patient's pseudonym (the id is stripped first, as the loader reads it)."""
    return hmac.new(key, _DOMAIN + patient_id.strip().encode(), hashlib.sha256).hexdigest()
