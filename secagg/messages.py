"""Wire encodings of every protocol message: compact, deterministic, length-checked binary.

Each message starts with b"SA", a version byte and a kind byte; integers are big-endian, ids u32,
sets are a u16 count then ids, byte strings a u32 length then bytes (capped per field). The masked
vector is raw little-endian uint32, so MaskedInput costs 4 bytes per coordinate plus 76 bytes.
`decode_*` raises `MalformedMessage` for anything that does not parse exactly (wrong magic, kind,
version, truncation, trailing bytes, over-long fields, unsorted or duplicate id sets).
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from secagg._codec import Reader, Writer
from secagg.errors import MalformedMessage
from secagg.primitives import KEY_BYTES, MAX_SIGNATURE_BYTES, NONCE_BYTES, TAG_BYTES
from secagg.shamir import SHARE_BYTES

MAGIC = b"SA"
VERSION = 1
DIGEST_BYTES = 32
SHARE_PLAINTEXT_BYTES = 4 + 4 + 2 * SHARE_BYTES
CIPHERTEXT_BYTES = NONCE_BYTES + SHARE_PLAINTEXT_BYTES + TAG_BYTES


class Kind(enum.IntEnum):
    ADVERTISE_KEYS = 1
    KEY_BROADCAST = 2
    SHARE_KEYS = 3
    SHARE_BUNDLE = 4
    MASKED_INPUT = 5
    SURVIVOR_LIST = 6
    CONSISTENCY_SIGNATURE = 7
    UNMASK_REQUEST = 8
    UNMASK_RESPONSE = 9


class ShareKind(enum.IntEnum):
    SELF_SEED = 0  # a share of b_v, given for survivors
    MASK_KEY = 1  # a share of s_v^SK, given for dropped peers


def _writer(kind: Kind) -> Writer:
    return Writer().raw(MAGIC).u8(VERSION).u8(kind)


def _reader(data: bytes, kind: Kind) -> Reader:
    what = kind.name.lower().replace("_", " ")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage(f"{what}: payload must be bytes, got {type(data).__name__}")
    r = Reader(data, what)
    if r.raw(2) != MAGIC:
        raise MalformedMessage(f"{what}: not a secagg message (bad magic)")
    version = r.u8()
    if version != VERSION:
        raise MalformedMessage(f"{what}: unsupported version {version}")
    got = r.u8()
    if got != kind:
        name = Kind(got).name if got in Kind._value2member_map_ else str(got)
        raise MalformedMessage(f"expected a {what} message, got kind {name}")
    return r


def _id_set(r: Reader, what: str) -> tuple[int, ...]:
    ids = r.ids()
    if any(b <= a for a, b in itertools.pairwise(ids)):
        raise MalformedMessage(f"{what}: ids must be strictly increasing, got {ids}")
    return tuple(ids)


@dataclass(frozen=True)
class SignedKeys:
    """One AdvertiseKeys entry: participant id, its two X25519 public keys and its signature."""

    ident: int
    c_pk: bytes
    s_pk: bytes
    signature: bytes

    def write(self, w: Writer) -> None:
        w.u32(self.ident).raw(self.c_pk).raw(self.s_pk).blob(self.signature)

    @classmethod
    def read(cls, r: Reader) -> SignedKeys:
        return cls(r.u32(), r.raw(KEY_BYTES), r.raw(KEY_BYTES), r.blob(MAX_SIGNATURE_BYTES))


@dataclass(frozen=True)
class AdvertiseKeys:
    config_digest: bytes
    keys: SignedKeys

    def encode(self) -> bytes:
        w = _writer(Kind.ADVERTISE_KEYS).raw(self.config_digest)
        self.keys.write(w)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> AdvertiseKeys:
        r = _reader(data, Kind.ADVERTISE_KEYS)
        msg = cls(r.raw(DIGEST_BYTES), SignedKeys.read(r))
        r.end()
        return msg


@dataclass(frozen=True)
class KeyBroadcast:
    config_digest: bytes
    entries: tuple[SignedKeys, ...]

    def encode(self) -> bytes:
        w = _writer(Kind.KEY_BROADCAST).raw(self.config_digest).u16(len(self.entries))
        for entry in self.entries:
            entry.write(w)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> KeyBroadcast:
        r = _reader(data, Kind.KEY_BROADCAST)
        digest = r.raw(DIGEST_BYTES)
        entries = tuple(SignedKeys.read(r) for _ in range(r.u16()))
        r.end()
        return cls(digest, entries)


@dataclass(frozen=True)
class ShareKeys:
    """Client → server: one ciphertext per other member of U1."""

    session_id: bytes
    sender: int
    ciphertexts: tuple[tuple[int, bytes], ...]  # (recipient, nonce ‖ AES-GCM ciphertext)

    def encode(self) -> bytes:
        w = _writer(Kind.SHARE_KEYS).raw(self.session_id).u32(self.sender)
        w.u16(len(self.ciphertexts))
        for recipient, ct in self.ciphertexts:
            w.u32(recipient).blob(ct)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> ShareKeys:
        r = _reader(data, Kind.SHARE_KEYS)
        session_id, sender = r.raw(DIGEST_BYTES), r.u32()
        cts = tuple((r.u32(), r.blob(CIPHERTEXT_BYTES)) for _ in range(r.u16()))
        r.end()
        return cls(session_id, sender, cts)


@dataclass(frozen=True)
class ShareBundle:
    """Server → client: the ciphertexts addressed to `recipient`; their senders are its U2 view."""

    session_id: bytes
    recipient: int
    ciphertexts: tuple[tuple[int, bytes], ...]  # (sender, ciphertext)

    def encode(self) -> bytes:
        w = _writer(Kind.SHARE_BUNDLE).raw(self.session_id).u32(self.recipient)
        w.u16(len(self.ciphertexts))
        for sender, ct in self.ciphertexts:
            w.u32(sender).blob(ct)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> ShareBundle:
        r = _reader(data, Kind.SHARE_BUNDLE)
        session_id, recipient = r.raw(DIGEST_BYTES), r.u32()
        cts = tuple((r.u32(), r.blob(CIPHERTEXT_BYTES)) for _ in range(r.u16()))
        r.end()
        return cls(session_id, recipient, cts)


@dataclass(frozen=True)
class MaskedInput:
    """Client → server: y_u (raw little-endian uint32) and a commitment to its self-mask seed."""

    session_id: bytes
    sender: int
    seed_commitment: bytes
    vector: npt.NDArray[np.uint32]

    def encode(self) -> bytes:
        w = _writer(Kind.MASKED_INPUT).raw(self.session_id).u32(self.sender)
        w.raw(self.seed_commitment).u32(self.vector.shape[0])
        body = np.ascontiguousarray(self.vector, dtype="<u4")
        return b"".join((w.getvalue(), body.data.cast("B")))  # one copy of the vector

    @classmethod
    def decode(cls, data: bytes, expected_length: int | None = None) -> MaskedInput:
        """Zero-copy: `vector` is a read-only view into `data`."""
        r = _reader(data, Kind.MASKED_INPUT)
        session_id, sender, commitment = r.raw(DIGEST_BYTES), r.u32(), r.raw(DIGEST_BYTES)
        length = r.u32()
        if expected_length is not None and length != expected_length:
            raise MalformedMessage(
                f"masked input: vector length {length}, the session expects {expected_length}"
            )
        if r.remaining != 4 * length:
            raise MalformedMessage(
                f"masked input: {r.remaining} vector bytes for a declared length of {length}"
            )
        vector = np.frombuffer(r.view(4 * length), dtype="<u4")
        return cls(session_id, sender, commitment, vector)


@dataclass(frozen=True)
class SurvivorList:
    session_id: bytes
    survivors: tuple[int, ...]

    def encode(self) -> bytes:
        return _writer(Kind.SURVIVOR_LIST).raw(self.session_id).ids(self.survivors).getvalue()

    @classmethod
    def decode(cls, data: bytes) -> SurvivorList:
        r = _reader(data, Kind.SURVIVOR_LIST)
        msg = cls(r.raw(DIGEST_BYTES), _id_set(r, "survivor list"))
        r.end()
        return msg


@dataclass(frozen=True)
class ConsistencySignature:
    session_id: bytes
    sender: int
    signature: bytes

    def encode(self) -> bytes:
        w = _writer(Kind.CONSISTENCY_SIGNATURE).raw(self.session_id).u32(self.sender)
        return w.blob(self.signature).getvalue()

    @classmethod
    def decode(cls, data: bytes) -> ConsistencySignature:
        r = _reader(data, Kind.CONSISTENCY_SIGNATURE)
        msg = cls(r.raw(DIGEST_BYTES), r.u32(), r.blob(MAX_SIGNATURE_BYTES))
        r.end()
        return msg


@dataclass(frozen=True)
class UnmaskRequest:
    session_id: bytes
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[tuple[int, bytes], ...]  # (signer, signature over the survivor set)

    def encode(self) -> bytes:
        w = _writer(Kind.UNMASK_REQUEST).raw(self.session_id)
        w.ids(self.survivors).ids(self.dropped).u16(len(self.signatures))
        for signer, sig in self.signatures:
            w.u32(signer).blob(sig)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> UnmaskRequest:
        r = _reader(data, Kind.UNMASK_REQUEST)
        session_id = r.raw(DIGEST_BYTES)
        survivors = _id_set(r, "unmask request survivors")
        dropped = _id_set(r, "unmask request dropped")
        sigs = tuple((r.u32(), r.blob(MAX_SIGNATURE_BYTES)) for _ in range(r.u16()))
        r.end()
        return cls(session_id, survivors, dropped, sigs)


@dataclass(frozen=True)
class UnmaskResponse:
    session_id: bytes
    sender: int
    shares: tuple[tuple[int, ShareKind, bytes], ...]  # (peer, kind, 66-byte share)

    def encode(self) -> bytes:
        w = _writer(Kind.UNMASK_RESPONSE).raw(self.session_id).u32(self.sender)
        w.u16(len(self.shares))
        for peer, kind, share in self.shares:
            w.u32(peer).u8(kind).raw(share)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> UnmaskResponse:
        r = _reader(data, Kind.UNMASK_RESPONSE)
        session_id, sender = r.raw(DIGEST_BYTES), r.u32()
        shares = []
        for _ in range(r.u16()):
            peer, kind = r.u32(), r.u8()
            if kind not in ShareKind._value2member_map_:
                raise MalformedMessage(f"unmask response: unknown share kind {kind}")
            shares.append((peer, ShareKind(kind), r.raw(SHARE_BYTES)))
        r.end()
        return cls(session_id, sender, tuple(shares))


def encode_share_plaintext(sender: int, recipient: int, b_share: bytes, s_share: bytes) -> bytes:
    return Writer().u32(sender).u32(recipient).raw(b_share).raw(s_share).getvalue()


def decode_share_plaintext(data: bytes) -> tuple[int, int, bytes, bytes]:
    r = Reader(data, "share plaintext")
    out = (r.u32(), r.u32(), r.raw(SHARE_BYTES), r.raw(SHARE_BYTES))
    r.end()
    return out
