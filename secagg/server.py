"""The coordinator's side of the protocol as a sans-I/O state machine.

Driven by `receive(sender, payload, now)` and `tick(now)`; the caller owns clocks and transport.
Each stage stays open until everyone expected has answered or its timeout (from the moment the
stage opened) has passed; closing it yields the next stage's messages. Fewer than t participants
at any close aborts the session with a reason. Masked inputs are added into one running uint32
sum as they arrive, so memory is O(d) whatever n is.

A session lives in memory only: a coordinator that restarts mid-session retries the step with a
new attempt and fresh keys (`coordinator/engine.py`); sites bind each release to one session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from secagg import primitives as P
from secagg.config import SessionConfig, Stage, StageTimeouts
from secagg.errors import (
    ProtocolViolation,
    SecAggError,
    StageError,
    WrongSession,
)
from secagg.messages import (
    CIPHERTEXT_BYTES,
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
)
from secagg.prg import apply_masks, pairwise_key, self_key
from secagg.shamir import decode_share, reconstruct_verified

_MAX_REASON_BYTES = 4096
_OPEN_STAGES = (
    Stage.ADVERTISE_KEYS,
    Stage.SHARE_KEYS,
    Stage.MASKED_INPUT,
    Stage.CONSISTENCY_CHECK,
    Stage.UNMASK,
)


@dataclass(frozen=True)
class Outbound:
    """A message to deliver to `recipient`, who should process it as its `stage` step."""

    recipient: int
    stage: Stage
    payload: bytes


@dataclass(frozen=True)
class SessionResult:
    """The exact sum (uint32, mod 2^32) of the survivors' quantised inputs.

    `faulty`: unmask responders whose shares were found off the polynomial of a secret (corrupted
    or forged); they were left out of every later reconstruction of the session.
    """

    total: npt.NDArray[np.uint32]
    survivors: frozenset[int]
    faulty: frozenset[int] = frozenset()


class ServerSession:
    """Relays, collects and finally unmasks one session; never sees an individual input."""

    def __init__(self, config: SessionConfig, timeouts: StageTimeouts, now: float) -> None:
        if not isinstance(config, SessionConfig) or not isinstance(timeouts, StageTimeouts):
            raise TypeError("ServerSession needs a SessionConfig and StageTimeouts")
        self.config = config
        self.timeouts = timeouts
        self._digest = config.digest()
        self.stage = Stage.ADVERTISE_KEYS
        self._opened = float(now)
        self.session_id: bytes | None = None
        self.result: SessionResult | None = None
        self.abort_reason: str | None = None
        self._advertised: dict[int, SignedKeys] = {}  # U1 once closed
        self._u1: tuple[int, ...] = ()
        self._shares: dict[int, dict[int, bytes]] = {}  # sender → recipient → ciphertext
        self._u2: tuple[int, ...] = ()
        self._sum = np.zeros(0, dtype=np.uint32)
        self._commitments: dict[int, bytes] = {}  # U3 once closed
        self._u3: tuple[int, ...] = ()
        self._signatures: dict[int, bytes] = {}  # U4 once closed
        self._u4: tuple[int, ...] = ()
        self._responses: dict[int, dict[tuple[int, ShareKind], bytes]] = {}  # U5

    # ------------------------------------------------------------------ views
    @property
    def u1(self) -> frozenset[int]:
        return frozenset(self._u1)

    @property
    def u2(self) -> frozenset[int]:
        return frozenset(self._u2)

    @property
    def u3(self) -> frozenset[int]:
        return frozenset(self._u3)

    @property
    def u4(self) -> frozenset[int]:
        return frozenset(self._u4)

    @property
    def deadline(self) -> float | None:
        """When the open stage closes even if someone has not answered."""
        if self.stage not in _OPEN_STAGES:
            return None
        return self._opened + self.timeouts.for_stage(self.stage)

    def _eligible(self) -> tuple[int, ...]:
        return {
            Stage.ADVERTISE_KEYS: self.config.participants,
            Stage.SHARE_KEYS: self._u1,
            Stage.MASKED_INPUT: self._u2,
            Stage.CONSISTENCY_CHECK: self._u3,
            Stage.UNMASK: self._u4,
        }.get(self.stage, ())

    def _received(self) -> set[int]:
        collected: dict[Stage, object] = {
            Stage.ADVERTISE_KEYS: self._advertised,
            Stage.SHARE_KEYS: self._shares,
            Stage.MASKED_INPUT: self._commitments,
            Stage.CONSISTENCY_CHECK: self._signatures,
            Stage.UNMASK: self._responses,
        }
        got = collected.get(self.stage)
        return set(got) if isinstance(got, dict) else set()

    def expected(self) -> frozenset[int]:
        """Who may still send in the current stage."""
        return frozenset(set(self._eligible()) - self._received())

    # ------------------------------------------------------------------ input
    def receive(self, sender: int, payload: bytes, now: float) -> None:
        """Validate and record one message; a typed error leaves the state unchanged."""
        del now  # late messages that arrive before the closing tick are still accepted
        if self.stage not in _OPEN_STAGES:
            raise StageError(f"session is {self.stage.value}; no more messages are accepted")
        if sender not in self._eligible():
            raise ProtocolViolation(
                f"participant {sender} may not send in stage {self.stage.value}"
            )
        if sender in self._received():
            raise ProtocolViolation(
                f"participant {sender} already sent its {self.stage.value} message"
            )
        handler = {
            Stage.ADVERTISE_KEYS: self._on_advertise,
            Stage.SHARE_KEYS: self._on_share_keys,
            Stage.MASKED_INPUT: self._on_masked_input,
            Stage.CONSISTENCY_CHECK: self._on_consistency,
            Stage.UNMASK: self._on_unmask,
        }[self.stage]
        handler(sender, payload)

    def _check_session(self, session_id: bytes, what: str) -> None:
        if session_id != self.session_id:
            raise WrongSession(f"{what} belongs to another session or round")

    @staticmethod
    def _check_sender(sender: int, claimed: int, what: str) -> None:
        if claimed != sender:
            raise ProtocolViolation(f"{what} from {sender} claims to come from {claimed}")

    def _on_advertise(self, sender: int, payload: bytes) -> None:
        msg = AdvertiseKeys.decode(payload)
        if msg.config_digest != self._digest:
            raise WrongSession("key advertisement is for another session configuration or round")
        self._check_sender(sender, msg.keys.ident, "key advertisement")
        if not msg.keys.signature:
            raise ProtocolViolation(f"key advertisement from {sender} is unsigned")
        self._advertised[sender] = msg.keys

    def _on_share_keys(self, sender: int, payload: bytes) -> None:
        msg = ShareKeys.decode(payload)
        self._check_session(msg.session_id, "share keys")
        self._check_sender(sender, msg.sender, "share keys")
        recipients = [r for r, _ in msg.ciphertexts]
        scope = self.config.scope(sender)
        wanted = [v for v in self._u1 if v != sender and v in scope]
        if sorted(recipients) != wanted or len(set(recipients)) != len(recipients):
            raise ProtocolViolation(
                f"share keys from {sender} must hold one ciphertext for each of {wanted}, "
                f"got {recipients}"
            )
        if any(len(ct) != CIPHERTEXT_BYTES for _, ct in msg.ciphertexts):
            raise ProtocolViolation(f"share keys from {sender}: ciphertext of the wrong size")
        self._shares[sender] = dict(msg.ciphertexts)

    def _on_masked_input(self, sender: int, payload: bytes) -> None:
        msg = MaskedInput.decode(payload, self.config.vector_length)
        self._check_session(msg.session_id, "masked input")
        self._check_sender(sender, msg.sender, "masked input")
        np.add(self._sum, msg.vector, out=self._sum)
        self._commitments[sender] = msg.seed_commitment

    def _on_consistency(self, sender: int, payload: bytes) -> None:
        msg = ConsistencySignature.decode(payload)
        self._check_session(msg.session_id, "consistency signature")
        self._check_sender(sender, msg.sender, "consistency signature")
        if not msg.signature:
            raise ProtocolViolation(f"consistency signature from {sender} is empty")
        self._signatures[sender] = msg.signature

    def _on_unmask(self, sender: int, payload: bytes) -> None:
        msg = UnmaskResponse.decode(payload)
        self._check_session(msg.session_id, "unmask response")
        self._check_sender(sender, msg.sender, "unmask response")
        scope = self.config.scope(sender)
        seeds = [v for v in self._u3 if v in scope]
        keys = [v for v in self._dropped() if v in scope]
        wanted = {(v, ShareKind.SELF_SEED) for v in seeds}
        wanted |= {(v, ShareKind.MASK_KEY) for v in keys}
        got = {(peer, kind): share for peer, kind, share in msg.shares}
        if len(got) != len(msg.shares) or set(got) != wanted:
            raise ProtocolViolation(
                f"unmask response from {sender} must hold self-seed shares for exactly "
                f"{seeds} and mask-key shares for exactly {keys}"
            )
        for (peer, _), share in got.items():
            try:
                decode_share(share)
            except SecAggError:
                raise ProtocolViolation(
                    f"unmask response from {sender}: bad share for {peer}"
                ) from None
        self._responses[sender] = got

    def _dropped(self) -> tuple[int, ...]:
        survivors = set(self._u3)
        return tuple(v for v in self._u2 if v not in survivors)

    # ------------------------------------------------------------------ progress
    def tick(self, now: float) -> list[Outbound]:
        """Close the open stage if everyone answered or its deadline passed; return the next
        stage's messages (empty if nothing changed, or the session ended)."""
        if self.stage not in _OPEN_STAGES:
            return []
        deadline = self._opened + self.timeouts.for_stage(self.stage)
        if self.expected() and now < deadline:
            return []
        closing = self.stage
        responders = tuple(sorted(self._received()))
        if len(responders) < self.config.threshold:
            self._abort(
                f"only {len(responders)} participants completed {closing.value} "
                f"({list(responders)}); threshold is {self.config.threshold}"
            )
            return []
        self._opened = float(now)
        if closing is Stage.ADVERTISE_KEYS:
            return self._open_share_keys(responders)
        if closing is Stage.SHARE_KEYS:
            return self._open_masked_input(responders)
        if closing is Stage.MASKED_INPUT:
            return self._open_consistency(responders)
        if closing is Stage.CONSISTENCY_CHECK:
            return self._open_unmask(responders)
        self._finish()
        return []

    def _abort(self, reason: str) -> None:
        self.stage = Stage.ABORTED
        # bounded (and still UTF-8): the reason goes into the coordinator's audit log and status
        self.abort_reason = reason.encode()[:_MAX_REASON_BYTES].decode(errors="ignore")
        self._sum = np.zeros(0, dtype=np.uint32)

    def _open_share_keys(self, u1: tuple[int, ...]) -> list[Outbound]:
        self._u1 = u1
        entries = tuple(self._advertised[i] for i in u1)
        self.session_id = P.compute_session_id(
            self._digest, {e.ident: (e.c_pk, e.s_pk) for e in entries}
        )
        payload = KeyBroadcast(self._digest, entries).encode()
        self.stage = Stage.SHARE_KEYS
        return [Outbound(i, Stage.SHARE_KEYS, payload) for i in u1]

    def _open_masked_input(self, u2: tuple[int, ...]) -> list[Outbound]:
        assert self.session_id is not None
        self._u2 = u2
        self._sum = np.zeros(self.config.vector_length, dtype=np.uint32)
        self.stage = Stage.MASKED_INPUT
        out = []
        for v in u2:
            scope = self.config.scope(v)
            cts = tuple((u, self._shares[u][v]) for u in u2 if u != v and u in scope)
            payload = ShareBundle(self.session_id, v, cts).encode()
            out.append(Outbound(v, Stage.MASKED_INPUT, payload))
        self._shares = {}  # relayed: the server keeps no ciphertexts
        return out

    def _open_consistency(self, u3: tuple[int, ...]) -> list[Outbound]:
        assert self.session_id is not None
        self._u3 = u3
        self.stage = Stage.CONSISTENCY_CHECK
        payload = SurvivorList(self.session_id, u3).encode()
        return [Outbound(u, Stage.CONSISTENCY_CHECK, payload) for u in u3]

    def _open_unmask(self, u4: tuple[int, ...]) -> list[Outbound]:
        assert self.session_id is not None
        self._u4 = u4
        self.stage = Stage.UNMASK
        sigs = tuple((u, self._signatures[u]) for u in u4)
        payload = UnmaskRequest(self.session_id, self._u3, self._dropped(), sigs).encode()
        return [Outbound(u, Stage.UNMASK, payload) for u in u4]

    def _finish(self) -> None:
        """Reconstruct b_v (v ∈ U3) and s_v^SK (v dropped) and strip every remaining mask.

        Each secret is checked against what its owner published before unmasking (b_v against
        its seed commitment, s_v^SK against its advertised public key), so a corrupted or forged
        share cannot slip in a wrong secret: it is routed around (`reconstruct_verified`), and
        responders whose shares are found inconsistent are left out of later reconstructions.
        The session aborts only if some secret has no reconstruction that passes its check.
        """
        assert self.session_id is not None
        t, round_, sid = self.config.share_threshold, self.config.round, self.session_id
        keys = {v: (e.c_pk, e.s_pk) for v, e in self._advertised.items()}
        responders = sorted(self._responses)
        answered = set(responders)
        short = [v for v in self._u2 if len(self.config.scope(v) & answered) < t]
        if short:  # sparse masking: a neighbourhood kept fewer than t_k responders
            self._abort(
                f"unmasking failed: the neighbourhoods of {short} kept fewer than {t} responding"
                " members, so their secrets cannot be rebuilt"
            )
            return
        faulty: set[int] = set()
        subtract: list[bytes] = []
        add: list[bytes] = []

        def recover(v: int, kind: ShareKind, accept: Callable[[bytes], bool], what: str) -> bytes:
            shares = [
                (u, decode_share(self._responses[u][(v, kind)]))
                for u in responders
                if u not in faulty and (v, kind) in self._responses[u]
            ]
            secret, bad = reconstruct_verified(shares, t, accept, what)
            faulty.update(bad)
            return secret

        try:
            for v in self._u3:
                seed = recover(
                    v,
                    ShareKind.SELF_SEED,
                    _matches_commitment(sid, v, self._commitments[v]),
                    f"self-mask seed of {v} (checked against its commitment)",
                )
                subtract.append(self_key(seed, sid, round_, v))
            for v in self._dropped():
                s_sk = recover(
                    v,
                    ShareKind.MASK_KEY,
                    _matches_public_key(keys[v][1]),
                    f"masking key of dropped {v} (checked against its advertised key)",
                )
                s_key = P.x25519_key(s_sk)
                for u in sorted(self.config.scope(v) & set(self._u3)):
                    shared = P.agree(s_key, keys[u][1])
                    # u added PRG(s_uv) if u < v and subtracted it if u > v: undo that
                    (subtract if u < v else add).append(pairwise_key(shared, sid, round_, u, v))
        except SecAggError as exc:
            self._abort(f"unmasking failed: {exc}")
            return
        total = self._sum
        apply_masks(total, add, subtract)
        self._sum = np.zeros(0, dtype=np.uint32)
        self.result = SessionResult(total, frozenset(self._u3), frozenset(faulty))
        self.stage = Stage.DONE


def _matches_commitment(
    session_id: bytes, ident: int, commitment: bytes
) -> Callable[[bytes], bool]:
    """Accepts exactly the self-mask seed that `ident` committed to in MaskedInput."""
    return lambda seed: P.seed_commitment(session_id, ident, seed) == commitment


def _matches_public_key(public: bytes) -> Callable[[bytes], bool]:
    """Accepts exactly the X25519 private keys (up to clamping) of an advertised public key."""
    return lambda private: P.x25519_public(private) == public
