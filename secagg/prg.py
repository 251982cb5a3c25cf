"""Mask generation: HKDF-SHA256 key derivation and an AES-256-CTR keystream read as uint32.

This is the hot path. Masks are never materialised as whole vectors: `apply_masks` walks the
accumulator in cache-sized chunks and, for each chunk, asks every open keystream for the next
chunk of words (written with `update_into` into one reused buffer) and adds or subtracts it in
place. Memory is O(d + chunk), whatever the number of masks.

Word i of a mask is bytes 4i..4i+3 of AES-256-CTR(key, initial counter block = 16 zero bytes),
little-endian. Every key is used for exactly one stream, so a fixed counter start is safe.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secagg.errors import InvalidInput

PURPOSE_PAIRWISE = b"pairwise"
PURPOSE_SELF = b"self"
PURPOSE_SHARE_ENCRYPTION = b"share-encryption"

_ZERO_IV = bytes(16)
CHUNK_WORDS = 1 << 15  # 128 KiB of words: accumulator chunk and keystream buffer stay in L2
_ZEROS = bytes(CHUNK_WORDS * 4)

U32Array = npt.NDArray[np.uint32]


def hkdf_info(purpose: bytes, round_: int, a: int, b: int) -> bytes:
    """purpose ‖ round (u64 BE) ‖ min id (u32 BE) ‖ max id (u32 BE)."""
    return purpose + struct.pack(">QII", round_, min(a, b), max(a, b))


def derive_key(
    secret: bytes, session_id: bytes, purpose: bytes, round_: int, a: int, b: int
) -> bytes:
    """HKDF-SHA256(ikm = secret, salt = session_id, info = hkdf_info(...)) → 32-byte key."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=session_id,
        info=hkdf_info(purpose, round_, a, b),
    ).derive(secret)


def pairwise_key(shared: bytes, session_id: bytes, round_: int, u: int, v: int) -> bytes:
    """Key of the mask shared by u and v (symmetric in u, v)."""
    return derive_key(shared, session_id, PURPOSE_PAIRWISE, round_, u, v)


def self_key(seed: bytes, session_id: bytes, round_: int, u: int) -> bytes:
    """Key of u's self mask, from its 32-byte seed b_u."""
    return derive_key(seed, session_id, PURPOSE_SELF, round_, u, u)


def keystream_words(key: bytes, count: int) -> U32Array:
    """The first `count` mask words of `key` as a fresh array (tests and small vectors)."""
    encryptor = Cipher(algorithms.AES(key), modes.CTR(_ZERO_IV)).encryptor()
    data = encryptor.update(bytes(4 * count)) + encryptor.finalize()
    return np.frombuffer(data, dtype="<u4").astype(np.uint32)


def apply_masks(
    acc: U32Array,
    add: Sequence[bytes],
    subtract: Sequence[bytes],
    base: U32Array | None = None,
) -> None:
    """acc = (base if given, else acc) + Σ PRG(k) for k in add − Σ PRG(k) for k in subtract,
    mod 2^32, in place. With `base`, the copy is fused into the first pass over each chunk."""
    if acc.dtype != np.uint32 or acc.ndim != 1 or not acc.flags.c_contiguous:
        raise InvalidInput("mask accumulator must be a contiguous 1-D uint32 array")
    if base is not None and (base.dtype != np.uint32 or base.shape != acc.shape):
        raise InvalidInput("mask base must be a uint32 array shaped like the accumulator")
    streams = [
        (Cipher(algorithms.AES(key), modes.CTR(_ZERO_IV)).encryptor(), positive)
        for keys, positive in ((add, True), (subtract, False))
        for key in keys
    ]
    if not streams:
        if base is not None:
            np.copyto(acc, base)
        return
    out = bytearray(CHUNK_WORDS * 4 + 15)  # update_into needs len(data) + block_size - 1
    words = np.frombuffer(out, dtype="<u4", count=CHUNK_WORDS)
    zeros = memoryview(_ZEROS)
    d = acc.shape[0]
    for lo in range(0, d, CHUNK_WORDS):
        m = min(CHUNK_WORDS, d - lo)
        part = acc[lo : lo + m]
        first = part if base is None else base[lo : lo + m]
        stream = words[:m]
        data = zeros[: 4 * m]
        for encryptor, positive in streams:
            encryptor.update_into(data, out)
            if positive:
                np.add(first, stream, out=part)
            else:
                np.subtract(first, stream, out=part)
            first = part


class Csprng:
    """Uniform words from an AES-256-CTR keystream (os.urandom key unless given one)."""

    def __init__(self, key: bytes | None = None) -> None:
        if key is None:
            key = os.urandom(32)
        if len(key) != 32:
            raise InvalidInput("Csprng key must be 32 bytes")
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(_ZERO_IV)).encryptor()
        self._scratch = bytearray(CHUNK_WORDS * 4 + 15)
        self._scratch_words = np.frombuffer(self._scratch, dtype="<u4", count=CHUNK_WORDS)

    def chunk(self, count: int) -> U32Array:
        """The next `count` ≤ CHUNK_WORDS words, in a scratch buffer reused by the next call."""
        if not 0 <= count <= CHUNK_WORDS:
            raise InvalidInput(f"Csprng.chunk takes at most {CHUNK_WORDS} words, got {count}")
        self._encryptor.update_into(memoryview(_ZEROS)[: 4 * count], self._scratch)
        return self._scratch_words[:count]

    def fill(self, out: U32Array) -> None:
        """Overwrite a contiguous uint32 array with fresh uniform words."""
        if out.dtype != np.uint32 or not out.flags.c_contiguous:
            raise InvalidInput("Csprng.fill needs a contiguous uint32 array")
        view = out.data.cast("B")
        n = len(view)
        step = CHUNK_WORDS * 4
        zeros = memoryview(_ZEROS)
        lo = 0
        while lo < n:
            m = min(step, n - lo)
            if lo + m + 15 <= n:  # room for update_into's slack inside `out` itself
                self._encryptor.update_into(zeros[:m], view[lo : lo + m + 15])
            else:
                tail = bytearray(m + 15)
                self._encryptor.update_into(zeros[:m], tail)
                view[lo : lo + m] = tail[:m]
            lo += m

    def words(self, count: int) -> U32Array:
        out = np.empty(count, dtype=np.uint32)
        self.fill(out)
        return out
