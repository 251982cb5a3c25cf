"""Encryption at rest of the site state derived from patients: cached releases, secagg secrets.

What it protects, honestly: a copy of `site.sqlite` (a backup, a disk image, a file shared by
mistake) is useless without the key. What it does not: anyone who can read the state folder while
the agent runs can read the key file too, and the agent holds the key in memory; a compromised
host is out of scope (docs/threat-model.md). Keep the key elsewhere (`CONCORDIA_STATE_KEY` from a
secret store) to make a copied state folder alone useless as well.

AES-256-GCM with a random 96-bit nonce per value; the associated data names the row (table and
key), so a ciphertext moved to another row does not decrypt. A value written before sealing
existed (no magic prefix) is read as it is and sealed when it is next written.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from federation.fsmodes import PRIVATE_FILE_MODE, write_file_atomic

KEY_FILE = "state.key"
KEY_ENV = "CONCORDIA_STATE_KEY"
MAGIC = b"CSE1"
NONCE_BYTES = 12


class SealingError(ValueError):
    """A sealed value that does not open (wrong key, altered or moved), or an unusable key."""


class StateSealer:
    """Seals and opens values of the site's state with one 256-bit key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise SealingError(f"the state key must be 32 bytes, got {len(key)}")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, row: str) -> bytes:
        """MAGIC ‖ nonce ‖ AES-GCM(plaintext, associated data = row)."""
        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + nonce + self._aead.encrypt(nonce, plaintext, row.encode())

    def open(self, blob: bytes, row: str) -> bytes:
        """The plaintext of a sealed value (an unsealed legacy value is returned as is)."""
        if not blob.startswith(MAGIC):
            return blob
        nonce = blob[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES :], row.encode())
        except InvalidTag:
            raise SealingError(
                f"sealed state for {row} does not open: wrong state key, or the value was altered"
                " or moved"
            ) from None


def load_state_key(state_dir: Path, env: Mapping[str, str] | None = None) -> bytes:
    """The key from `CONCORDIA_STATE_KEY` (base64 or hex of 32 bytes), else `state_dir/state.key`
    (created once, mode 0600)."""
    environment = os.environ if env is None else env
    text = environment.get(KEY_ENV, "").strip()
    if text:
        return _decode_key(text)
    path = state_dir / KEY_FILE
    if not path.exists():
        write_file_atomic(path, base64.b64encode(os.urandom(32)) + b"\n", PRIVATE_FILE_MODE)
    return _decode_key(path.read_text(encoding="ascii").strip(), str(path))


def _decode_key(text: str, source: str = KEY_ENV) -> bytes:
    for decode in (bytes.fromhex, base64.b64decode):
        try:
            key = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(key) == 32:
            return key
    raise SealingError(f"{source}: the state key must be 32 bytes in hex or base64")
