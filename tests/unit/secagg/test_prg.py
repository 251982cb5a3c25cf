"""Known-answer vectors for the mask derivation, and the streaming accumulator's arithmetic.

The pinned values were computed once with the raw `cryptography` HKDF and AES objects (an
independent path, repeated below), so any change of salt, info layout, counter start or word
order fails loudly.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secagg.errors import InvalidInput
from secagg.prg import (
    CHUNK_WORDS,
    Csprng,
    apply_masks,
    derive_key,
    hkdf_info,
    keystream_words,
    pairwise_key,
    self_key,
)

pytestmark = pytest.mark.unit

SECRET = bytes(range(32))
SESSION = bytes(range(32, 64))
PAIRWISE_KEY = "f112aa734642ce07f54d89d97aae624ef9497553916d974faa57e7034c64facf"
PAIRWISE_WORDS = [0x59D5BC0E, 0x60DDD8C3, 0x533DA4EA, 0xB85E51EC, 0x50BBE296, 0x86578724]
SELF_KEY = "3afdefba5dc0afa21037f54b8d7c79c70e4aa5aacf1c7371c4d5d50488d5534f"
SELF_WORDS = [0x48EC6A79, 0x1A5AE317, 0x328CC2D5, 0x2F1A52B4, 0xA4C9CBA6, 0xC4CA8056]


def _independent_key(purpose: bytes, a: int, b: int) -> bytes:
    info = purpose + struct.pack(">QII", 7, min(a, b), max(a, b))
    return HKDF(hashes.SHA256(), 32, SESSION, info).derive(SECRET)


def _independent_words(key: bytes, count: int) -> list[int]:
    stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(4 * count))
    return list(struct.unpack(f"<{count}I", stream))


def test_pinned_vectors_agree_with_an_independent_computation() -> None:
    assert _independent_key(b"pairwise", 3, 5).hex() == PAIRWISE_KEY
    assert _independent_key(b"self", 4, 4).hex() == SELF_KEY
    assert _independent_words(bytes.fromhex(PAIRWISE_KEY), 6) == PAIRWISE_WORDS


def test_hkdf_known_answers() -> None:
    assert pairwise_key(SECRET, SESSION, 7, 5, 3).hex() == PAIRWISE_KEY
    assert pairwise_key(SECRET, SESSION, 7, 3, 5).hex() == PAIRWISE_KEY  # symmetric in the pair
    assert self_key(SECRET, SESSION, 7, 4).hex() == SELF_KEY
    assert hkdf_info(b"self", 7, 4, 4) == b"self" + bytes.fromhex("0000000000000007") + (
        bytes.fromhex("0000000400000004")
    )


def test_prg_known_answers() -> None:
    assert keystream_words(bytes.fromhex(PAIRWISE_KEY), 6).tolist() == PAIRWISE_WORDS
    assert keystream_words(bytes.fromhex(SELF_KEY), 6).tolist() == SELF_WORDS
    # AES-256 of the zero block under the zero key is the published dc95c078 a2408989 ...
    assert keystream_words(bytes(32), 2).tolist() == [0x78C095DC, 0x898940A2]


def test_every_input_changes_the_key() -> None:
    base = derive_key(SECRET, SESSION, b"pairwise", 7, 3, 5)
    variants = [
        derive_key(SECRET[::-1], SESSION, b"pairwise", 7, 3, 5),
        derive_key(SECRET, SESSION[::-1], b"pairwise", 7, 3, 5),
        derive_key(SECRET, SESSION, b"self", 7, 3, 5),
        derive_key(SECRET, SESSION, b"pairwise", 8, 3, 5),
        derive_key(SECRET, SESSION, b"pairwise", 7, 3, 6),
    ]
    assert len({base, *variants}) == 6


def test_streamed_masks_equal_whole_keystreams_across_chunk_boundaries() -> None:
    d = 2 * CHUNK_WORDS + 123
    keys = [bytes([i]) * 32 for i in range(1, 5)]
    base = np.random.default_rng(0).integers(0, 2**32, d, dtype=np.uint32)
    words = [keystream_words(k, d).astype(np.int64) for k in keys]
    expected = base.astype(np.int64) + words[0] + words[1] - words[2] - words[3]
    acc = np.empty(d, dtype=np.uint32)
    apply_masks(acc, keys[:2], keys[2:], base=base)
    np.testing.assert_array_equal(acc, np.mod(expected, 2**32).astype(np.uint32))
    in_place = base.copy()
    apply_masks(in_place, keys[:2], keys[2:])
    np.testing.assert_array_equal(in_place, acc)


def test_adding_and_subtracting_the_same_mask_cancels() -> None:
    x = np.arange(1000, dtype=np.uint32)
    acc = x.copy()
    apply_masks(acc, [b"k" * 32], [b"k" * 32])
    np.testing.assert_array_equal(acc, x)


def test_accumulator_must_be_uint32() -> None:
    with pytest.raises(InvalidInput, match="uint32"):
        apply_masks(np.zeros(4, dtype=np.int64), [b"k" * 32], [])


def test_csprng_is_the_keystream_of_its_key_and_fresh_by_default() -> None:
    key = bytes.fromhex(SELF_KEY)
    rng = Csprng(key)
    first = rng.chunk(3).copy()
    rest = rng.words(CHUNK_WORDS + 5)
    whole = keystream_words(key, CHUNK_WORDS + 8)
    np.testing.assert_array_equal(np.concatenate([first, rest]), whole)
    assert not np.array_equal(Csprng().words(8), Csprng().words(8))
    with pytest.raises(InvalidInput):
        Csprng(b"short")
