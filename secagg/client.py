"""The participant's side of the protocol as a sans-I/O state machine (bytes in, bytes out).

Each stage method runs at most once. A refused message raises a typed `SecAggError` and leaves
the state exactly as it was (all checks and computations happen on locals; attributes are
assigned only once everything succeeded), so a caller can report the refusal and keep going.

Mask sign convention: for every peer v in its U2 view (within its neighbourhood when masking is
sparse), u adds PRG(s_{u,v}) if u < v and subtracts it if u > v, so the pair's masks cancel.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric import ec

from secagg import primitives as P
from secagg._codec import Reader, Writer
from secagg.client_state import check_restored, increasing_ids
from secagg.config import STAGE_CODES, STAGES_BY_CODE, SessionConfig, Stage
from secagg.errors import (
    DecryptionFailed,
    InsufficientParticipants,
    InvalidConfig,
    InvalidInput,
    InvalidSignature,
    MalformedMessage,
    ProtocolViolation,
    StageError,
    WrongSession,
)
from secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    KeyBroadcast,
    MaskedInput,
    ShareBundle,
    ShareKeys,
    ShareKind,
    SignedKeys,
    SurvivorList,
    UnmaskRequest,
    UnmaskResponse,
    decode_share_plaintext,
    encode_share_plaintext,
)
from secagg.prg import apply_masks, pairwise_key, self_key
from secagg.shamir import SHARE_BYTES, decode_share, encode_share, split

_STATE_MAGIC = b"SACS"
_STATE_VERSION = 1


class ClientSession:
    """One participant in one secure-aggregation session."""

    def __init__(
        self,
        config: SessionConfig,
        my_id: int,
        identity_key: ec.EllipticCurvePrivateKey,
        peer_identity_keys: Mapping[int, ec.EllipticCurvePublicKey],
    ) -> None:
        if not isinstance(config, SessionConfig):
            raise InvalidConfig("config must be a SessionConfig")
        if my_id not in config.participants:
            raise InvalidConfig(f"participant {my_id} is not in the session {config.participants}")
        P.check_identity_key(identity_key, "identity_key")
        own_public = identity_key.public_key()
        keys = dict(peer_identity_keys)
        for ident, key in keys.items():
            P.check_identity_key(key, f"identity key of participant {ident}")
        missing = [i for i in config.participants if i != my_id and i not in keys]
        if missing:
            raise InvalidConfig(f"no identity key for participants {missing}")
        if my_id in keys and keys[my_id].public_numbers() != own_public.public_numbers():
            raise InvalidConfig(f"the identity key given for {my_id} is not this client's own key")
        keys[my_id] = own_public
        self.config = config
        self.my_id = my_id
        self._identity_key = identity_key
        self._identity_keys = keys
        self._digest = config.digest()
        self.stage = Stage.ADVERTISE_KEYS
        self.session_id: bytes | None = None
        self._c_sk = b""
        self._s_sk = b""
        self._peer_keys: dict[int, tuple[bytes, bytes]] = {}  # U1: id → (c_pk, s_pk)
        self._seed = b""
        self._held: dict[int, tuple[bytes, bytes]] = {}  # U2 view: id → (b share, s share) held
        self._signed_survivors: tuple[int, ...] = ()

    def _expect(self, stage: Stage) -> None:
        if self.stage is not stage:
            raise StageError(
                f"participant {self.my_id}: {stage.value} requested, but this session expects "
                f"{self.stage.value} (each stage runs once, in order)"
            )

    def _session(self, session_id: bytes, what: str) -> bytes:
        assert self.session_id is not None
        if session_id != self.session_id:
            raise WrongSession(f"{what} belongs to another session or round")
        return self.session_id

    @property
    def u2_view(self) -> frozenset[int]:
        """The peers this client received shares from, plus itself (empty once DONE)."""
        return frozenset(self._held)

    def advertise_keys(self) -> bytes:
        """Fresh X25519 pairs (c: share encryption, s: masking), signed with the identity key."""
        self._expect(Stage.ADVERTISE_KEYS)
        c_sk, c_pk = P.new_x25519()
        s_sk, s_pk = P.new_x25519()
        signature = P.sign(
            self._identity_key, P.advertise_signed_bytes(self._digest, self.my_id, c_pk, s_pk)
        )
        message = AdvertiseKeys(self._digest, SignedKeys(self.my_id, c_pk, s_pk, signature))
        self._c_sk, self._s_sk = c_sk, s_sk
        self.stage = Stage.SHARE_KEYS
        return message.encode()

    def share_keys(self, key_broadcast: bytes) -> bytes:
        """Verify every advertised key, then Shamir-share b_u and s_u^SK to U1 (encrypted)."""
        self._expect(Stage.SHARE_KEYS)
        msg = KeyBroadcast.decode(key_broadcast)
        if msg.config_digest != self._digest:
            raise WrongSession("key broadcast is for another session configuration or round")
        keys: dict[int, tuple[bytes, bytes]] = {}
        for entry in msg.entries:
            if entry.ident in keys:
                raise ProtocolViolation(f"key broadcast lists participant {entry.ident} twice")
            if entry.ident not in self.config.participants:
                raise ProtocolViolation(f"key broadcast lists non-participant {entry.ident}")
            if not P.verify(
                self._identity_keys[entry.ident],
                entry.signature,
                P.advertise_signed_bytes(self._digest, entry.ident, entry.c_pk, entry.s_pk),
            ):
                raise InvalidSignature(
                    f"the keys advertised for participant {entry.ident} are not signed by its "
                    "identity key (missing signature or substituted keys)"
                )
            keys[entry.ident] = (entry.c_pk, entry.s_pk)
        c_key = P.x25519_key(self._c_sk)
        mine = (P.x25519_public(c_key), P.x25519_public(self._s_sk))
        if keys.get(self.my_id) != mine:
            raise ProtocolViolation(
                f"key broadcast does not contain participant {self.my_id}'s own keys unchanged"
            )
        if len(keys) < self.config.threshold:
            raise InsufficientParticipants(
                f"key broadcast has {len(keys)} participants, threshold is {self.config.threshold}"
            )
        publics = [k for pair in keys.values() for k in pair]
        if len(set(publics)) != len(publics):
            raise ProtocolViolation("key broadcast reuses a public key")
        session_id = P.compute_session_id(self._digest, keys)
        seed = os.urandom(32)
        scope, t_s = self.config.scope(self.my_id), self.config.share_threshold
        ids = sorted(v for v in keys if v in scope)  # all of U1, or U1 ∩ N[me] when sparse
        if len(ids) < t_s:
            raise InsufficientParticipants(
                f"only {len(ids)} of participant {self.my_id}'s neighbourhood advertised keys;"
                f" {t_s} needed to share its secrets"
            )
        b_shares = split(seed, t_s, ids)
        s_shares = split(self._s_sk, t_s, ids)
        ciphertexts = []
        for v in ids:
            if v == self.my_id:
                continue
            plaintext = encode_share_plaintext(
                self.my_id, v, encode_share(b_shares[v]), encode_share(s_shares[v])
            )
            ct = P.encrypt_share(
                c_key, keys[v][0], session_id, self.config.round, self.my_id, v, plaintext
            )
            ciphertexts.append((v, ct))
        out = ShareKeys(session_id, self.my_id, tuple(ciphertexts)).encode()
        self.session_id = session_id
        self._peer_keys = keys
        self._seed = seed
        self._held = {
            self.my_id: (encode_share(b_shares[self.my_id]), encode_share(s_shares[self.my_id]))
        }
        self.stage = Stage.MASKED_INPUT
        return out

    def masked_input(self, share_bundle: bytes, quantized: npt.NDArray[np.uint32]) -> bytes:
        """Decrypt the shares addressed here (their senders are the U2 view), then send
        y = x + PRG(b_u) + Σ_{v in view, u<v} PRG(s_uv) − Σ_{v in view, u>v} PRG(s_uv) mod 2^32."""
        self._expect(Stage.MASKED_INPUT)
        x = np.asarray(quantized)
        if x.dtype != np.uint32 or x.shape != (self.config.vector_length,):
            raise InvalidInput(
                f"masked input must be a uint32 vector of length {self.config.vector_length}, "
                f"got {x.dtype} of shape {x.shape}"
            )
        msg = ShareBundle.decode(share_bundle)
        session_id = self._session(msg.session_id, "share bundle")
        if msg.recipient != self.my_id:
            raise ProtocolViolation(
                f"share bundle is addressed to {msg.recipient}, not {self.my_id}"
            )
        held = dict(self._held)
        c_key = P.x25519_key(self._c_sk)
        scope = self.config.scope(self.my_id)
        for sender, ct in msg.ciphertexts:
            if sender == self.my_id or sender not in self._peer_keys or sender not in scope:
                raise ProtocolViolation(
                    f"share bundle holds a ciphertext from {sender}, not in U1 (or not a neighbour)"
                )
            if sender in held:
                raise ProtocolViolation(f"share bundle holds two ciphertexts from {sender}")
            plaintext = P.decrypt_share(
                c_key,
                self._peer_keys[sender][0],
                session_id,
                self.config.round,
                sender,
                self.my_id,
                ct,
            )
            try:
                pt_sender, pt_recipient, b_share, s_share = decode_share_plaintext(plaintext)
                decode_share(b_share), decode_share(s_share)
            except (MalformedMessage, InvalidInput) as exc:
                raise DecryptionFailed(
                    f"share plaintext from {sender} is malformed: {exc}"
                ) from None
            if (pt_sender, pt_recipient) != (sender, self.my_id):
                raise ProtocolViolation(
                    f"share from {sender} names sender {pt_sender} and recipient {pt_recipient}"
                )
            held[sender] = (b_share, s_share)
        if len(held) < self.config.share_threshold:
            raise InsufficientParticipants(
                f"shares from only {len(held) - 1} peers; "
                f"{self.config.share_threshold} participants needed"
            )
        add = [self_key(self._seed, session_id, self.config.round, self.my_id)]
        subtract: list[bytes] = []
        s_key = P.x25519_key(self._s_sk)
        for v in sorted(held):
            if v == self.my_id:
                continue
            shared = P.agree(s_key, self._peer_keys[v][1])
            key = pairwise_key(shared, session_id, self.config.round, self.my_id, v)
            (add if self.my_id < v else subtract).append(key)
        y = np.empty_like(x)
        apply_masks(y, add, subtract, base=x)
        commitment = P.seed_commitment(session_id, self.my_id, self._seed)
        out = MaskedInput(session_id, self.my_id, commitment, y).encode()
        self._held = held
        self.stage = Stage.CONSISTENCY_CHECK
        return out

    def consistency_check(self, survivor_list: bytes) -> bytes:
        """Sign the survivor set U3 after checking it is large enough and within the U2 view."""
        self._expect(Stage.CONSISTENCY_CHECK)
        msg = SurvivorList.decode(survivor_list)
        session_id = self._session(msg.session_id, "survivor list")
        survivors = msg.survivors
        if len(survivors) < self.config.threshold:
            raise InsufficientParticipants(
                f"{len(survivors)} survivors, threshold is {self.config.threshold}"
            )
        outside = sorted((set(survivors) & self.config.scope(self.my_id)) - set(self._held))
        outside = outside or sorted(set(survivors) - set(self._peer_keys))
        if outside:
            raise ProtocolViolation(f"survivor list names {outside}, who never shared keys here")
        if self.my_id not in survivors:
            raise ProtocolViolation(f"survivor list omits participant {self.my_id} itself")
        signature = P.sign(self._identity_key, P.consistency_signed_bytes(session_id, survivors))
        out = ConsistencySignature(session_id, self.my_id, signature).encode()
        self._signed_survivors = survivors
        self.stage = Stage.UNMASK
        return out

    def unmask(self, unmask_request: bytes) -> bytes:
        """Reveal b shares of survivors and s^SK shares of dropped peers, never both for one peer,
        once, and only for a survivor set that at least t survivors signed."""
        self._expect(Stage.UNMASK)
        msg = UnmaskRequest.decode(unmask_request)
        session_id = self._session(msg.session_id, "unmask request")
        survivors, dropped = set(msg.survivors), set(msg.dropped)
        t = self.config.threshold
        both = sorted(survivors & dropped)
        if both:
            raise ProtocolViolation(f"unmask request names {both} both as survivor and as dropped")
        named = survivors | dropped
        unknown = sorted((named & self.config.scope(self.my_id)) - set(self._held))
        unknown = unknown or sorted(named - set(self._peer_keys))
        if unknown:
            raise ProtocolViolation(f"unmask request names {unknown}, who never shared keys here")
        if len(survivors) < t:
            raise InsufficientParticipants(f"{len(survivors)} survivors, threshold is {t}")
        if self.my_id not in survivors:
            raise ProtocolViolation(f"unmask request does not list participant {self.my_id}")
        if msg.survivors != self._signed_survivors:
            raise ProtocolViolation(
                f"unmask request survivors {list(msg.survivors)} differ from the set this "
                f"participant signed {list(self._signed_survivors)}"
            )
        signed = P.consistency_signed_bytes(session_id, msg.survivors)
        signers: set[int] = set()
        for signer, signature in msg.signatures:
            if signer in signers:
                raise ProtocolViolation(f"unmask request carries two signatures from {signer}")
            if signer in survivors and P.verify(self._identity_keys[signer], signature, signed):
                signers.add(signer)
        if len(signers) < t:
            raise InvalidSignature(
                f"only {len(signers)} valid consistency signatures over the survivor set "
                f"from distinct survivors; {t} needed"
            )
        # the double-masking rule: survivors get b shares, dropped peers s shares, never both
        held = set(self._held)  # ⊆ N[me] when sparse: only those shares exist here
        shares = [(v, ShareKind.SELF_SEED, self._held[v][0]) for v in sorted(survivors & held)]
        shares += [(v, ShareKind.MASK_KEY, self._held[v][1]) for v in sorted(dropped & held)]
        out = UnmaskResponse(session_id, self.my_id, tuple(shares)).encode()
        self._wipe()
        self.stage = Stage.DONE
        return out

    def _wipe(self) -> None:
        """Forget every session secret (both private keys, the seed, every share held) once
        nothing more can be asked; what stays is public. Python cannot overwrite `bytes`, so
        this drops the references; a persisted DONE state holds no secret at all."""
        self._c_sk = b""
        self._s_sk = b""
        self._seed = b""
        self._held = {}

    def to_bytes(self) -> bytes:
        """All session secrets and progress, except the long-term identity key (store it safely)."""
        w = Writer().raw(_STATE_MAGIC).u8(_STATE_VERSION).blob(self.config.to_bytes())
        w.u32(self.my_id).u8(STAGE_CODES[self.stage])
        w.blob(self._c_sk).blob(self._s_sk).blob(self.session_id or b"").blob(self._seed)
        w.u16(len(self._peer_keys))
        for ident in sorted(self._peer_keys):
            c_pk, s_pk = self._peer_keys[ident]
            w.u32(ident).raw(c_pk).raw(s_pk)
        w.u16(len(self._held))
        for ident in sorted(self._held):
            b_share, s_share = self._held[ident]
            w.u32(ident).raw(b_share).raw(s_share)
        w.ids(self._signed_survivors)
        return w.getvalue()

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        identity_key: ec.EllipticCurvePrivateKey,
        peer_identity_keys: Mapping[int, ec.EllipticCurvePublicKey],
    ) -> ClientSession:
        """Inverse of `to_bytes`. Input that is not exactly a state this class can reach for
        its stage (truncated, altered, keys of the wrong length or not matching the advertised
        ones, sets out of order) raises a `SecAggError`, never anything else."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise MalformedMessage(f"client state must be bytes, got {type(data).__name__}")
        r = Reader(data, "client state")
        if r.raw(4) != _STATE_MAGIC:
            raise MalformedMessage("client state: bad magic")
        if (version := r.u8()) != _STATE_VERSION:
            raise MalformedMessage(f"client state: unsupported version {version}")
        config = SessionConfig.from_bytes(r.blob())
        session = cls(config, r.u32(), identity_key, peer_identity_keys)
        code = r.u8()
        if code not in STAGES_BY_CODE or STAGES_BY_CODE[code] is Stage.ABORTED:
            raise MalformedMessage(f"client state: unknown stage code {code}")
        stage = STAGES_BY_CODE[code]
        c_sk, s_sk, session_id, seed = r.blob(32), r.blob(32), r.blob(32), r.blob(32)
        peer_keys = {
            ident: (r.raw(P.KEY_BYTES), r.raw(P.KEY_BYTES))
            for ident in increasing_ids(r, "peer keys")
        }
        held = {
            ident: (r.raw(SHARE_BYTES), r.raw(SHARE_BYTES))
            for ident in increasing_ids(r, "held shares")
        }
        signed = tuple(r.ids())
        r.end()
        if any(b <= a for a, b in itertools.pairwise(signed)):
            raise MalformedMessage("client state: signed survivors not in increasing order")
        check_restored(
            config, session.my_id, stage, c_sk, s_sk, session_id, seed, peer_keys, held, signed
        )
        session.stage = stage
        session._c_sk, session._s_sk, session._seed = c_sk, s_sk, seed
        session.session_id = session_id or None
        session._peer_keys, session._held, session._signed_survivors = peer_keys, held, signed
        return session
