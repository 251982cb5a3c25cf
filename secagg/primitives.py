"""Cryptographic building blocks, with no protocol state: key agreement, share encryption,
signatures and the byte strings that get signed or hashed. The protocol modules (`client`,
`server`) only combine these; nothing here knows about stages.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secagg.errors import DecryptionFailed, InvalidInput, ProtocolViolation
from secagg.prg import PURPOSE_SHARE_ENCRYPTION, derive_key

DOMAIN = b"concordia-secagg-v1/"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
MAX_SIGNATURE_BYTES = 80  # DER ECDSA P-256 signatures are at most 72 bytes


def new_x25519() -> tuple[bytes, bytes]:
    """A fresh (private, public) X25519 pair as raw 32-byte strings."""
    private = X25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


PrivateKey = bytes | X25519PrivateKey  # raw 32 bytes, or a key object built once with x25519_key


def x25519_key(private: PrivateKey) -> X25519PrivateKey:
    """A key object for repeated agreements (building one from raw bytes costs a scalar
    multiplication, as much as an agreement)."""
    if isinstance(private, X25519PrivateKey):
        return private
    return X25519PrivateKey.from_private_bytes(private)


def x25519_public(private: PrivateKey) -> bytes:
    """The public key of a private key (used to check a reconstructed key)."""
    return x25519_key(private).public_key().public_bytes_raw()


def agree(private: PrivateKey, peer_public: bytes) -> bytes:
    """X25519(private, peer_public); a low-order peer key is a protocol violation."""
    try:
        return x25519_key(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise ProtocolViolation(f"X25519 agreement failed (bad peer public key): {exc}") from None


def share_aad(session_id: bytes, round_: int, sender: int, recipient: int) -> bytes:
    return DOMAIN + b"share\x00" + session_id + struct.pack(">QII", round_, sender, recipient)


def encrypt_share(
    c_private: PrivateKey,
    peer_c_public: bytes,
    session_id: bytes,
    round_: int,
    sender: int,
    recipient: int,
    plaintext: bytes,
) -> bytes:
    """nonce ‖ AES-256-GCM(key = HKDF(X25519(c_u, c_v)), AAD binds session, round and both ids)."""
    key = derive_key(
        agree(c_private, peer_c_public),
        session_id,
        PURPOSE_SHARE_ENCRYPTION,
        round_,
        sender,
        recipient,
    )
    nonce = os.urandom(NONCE_BYTES)  # random: a restored client re-encrypting can never reuse one
    aad = share_aad(session_id, round_, sender, recipient)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt_share(
    c_private: PrivateKey,
    peer_c_public: bytes,
    session_id: bytes,
    round_: int,
    sender: int,
    recipient: int,
    ciphertext: bytes,
) -> bytes:
    """Inverse of `encrypt_share`; any tampering, replay or misaddressing → DecryptionFailed."""
    if len(ciphertext) < NONCE_BYTES + TAG_BYTES:
        raise DecryptionFailed(f"share ciphertext from {sender} is too short")
    key = derive_key(
        agree(c_private, peer_c_public),
        session_id,
        PURPOSE_SHARE_ENCRYPTION,
        round_,
        sender,
        recipient,
    )
    aad = share_aad(session_id, round_, sender, recipient)
    try:
        return AESGCM(key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], aad)
    except InvalidTag:
        raise DecryptionFailed(
            f"share ciphertext from participant {sender} to {recipient} failed authentication "
            "(tampered, replayed from another session or round, or misaddressed)"
        ) from None


def sign(identity_key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    return identity_key.sign(message, ec.ECDSA(hashes.SHA256()))


def verify(public_key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> bool:
    if not signature or len(signature) > MAX_SIGNATURE_BYTES:
        return False
    try:
        public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except _CryptoInvalidSignature:
        return False
    return True


def check_identity_key(key: object, what: str) -> None:
    """Identity keys are ECDSA P-256, the key type of the site certificates."""
    curve = getattr(key, "curve", None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) or not (
        isinstance(curve, ec.SECP256R1)
    ):
        raise InvalidInput(f"{what} must be an ECDSA P-256 key")


def advertise_signed_bytes(config_digest: bytes, ident: int, c_pk: bytes, s_pk: bytes) -> bytes:
    """What a client signs in AdvertiseKeys: the session config (incl. context), its id, keys."""
    return DOMAIN + b"advertise\x00" + config_digest + struct.pack(">I", ident) + c_pk + s_pk


def consistency_signed_bytes(session_id: bytes, survivors: Iterable[int]) -> bytes:
    """What a client signs in ConsistencyCheck: the session and the sorted survivor set."""
    ids = sorted(survivors)
    return (
        DOMAIN
        + b"consistency\x00"
        + session_id
        + struct.pack(">H", len(ids))
        + b"".join(struct.pack(">I", i) for i in ids)
    )


def compute_session_id(config_digest: bytes, keys: dict[int, tuple[bytes, bytes]]) -> bytes:
    """SHA-256 over the config (incl. context) and every advertised (c_pk, s_pk), sorted by id."""
    h = hashlib.sha256(DOMAIN + b"session\x00" + config_digest)
    for ident in sorted(keys):
        c_pk, s_pk = keys[ident]
        h.update(struct.pack(">I", ident) + c_pk + s_pk)
    return h.digest()


def seed_commitment(session_id: bytes, ident: int, seed: bytes) -> bytes:
    """Binds a client to its self-mask seed b_u before unmasking (reveals nothing: b_u is 256-bit
    uniform), so the server can tell a wrong reconstruction from a right one."""
    return hashlib.sha256(
        DOMAIN + b"self-seed\x00" + session_id + struct.pack(">I", ident) + seed
    ).digest()
