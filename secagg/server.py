"""The coordinator's side of the protocol as a sans-I/O state machine.

Driven by `receive(sender, payload, now)` and `tick(now)`; the caller owns clocks and transport.
Each stage stays open until everyone expected has answered or its timeout (from the moment the
stage opened) has passed; closing it yields the next stage's messages. Fewer than t participants
at any close aborts the session with a reason. Masked inputs are added into one running uint32
sum as they arrive, so memory is O(d) whatever n is.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from secagg import primitives as P
from secagg._codec import Reader, Writer
from secagg.config import (
    STAGE_CODES,
    STAGE_LEVELS,
    STAGES_BY_CODE,
    SessionConfig,
    Stage,
    StageTimeouts,
)
from secagg.errors import (
    MalformedMessage,
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
from secagg.shamir import PRIME, SHARE_BYTES, decode_share, reconstruct_verified

_STATE_MAGIC = b"SASS"
_STATE_VERSION = 2  # 2: the result records faulty unmask responders
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
        wanted = [v for v in self._u1 if v != sender]
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
        wanted = {(v, ShareKind.SELF_SEED) for v in self._u3}
        wanted |= {(v, ShareKind.MASK_KEY) for v in self._dropped()}
        got = {(peer, kind): share for peer, kind, share in msg.shares}
        if len(got) != len(msg.shares) or set(got) != wanted:
            raise ProtocolViolation(
                f"unmask response from {sender} must hold self-seed shares for exactly "
                f"{list(self._u3)} and mask-key shares for exactly {list(self._dropped())}"
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
        # bounded (and still UTF-8) so that the saved state can hold it
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
            cts = tuple((u, self._shares[u][v]) for u in u2 if u != v)
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
        t, round_, sid = self.config.threshold, self.config.round, self.session_id
        keys = {v: (e.c_pk, e.s_pk) for v, e in self._advertised.items()}
        responders = sorted(self._responses)
        faulty: set[int] = set()
        subtract: list[bytes] = []
        add: list[bytes] = []

        def recover(v: int, kind: ShareKind, accept: Callable[[bytes], bool], what: str) -> bytes:
            shares = [
                (u, decode_share(self._responses[u][(v, kind)]))
                for u in responders
                if u not in faulty
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
                for u in self._u3:
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

    # ------------------------------------------------------------------ persistence
    def to_bytes(self) -> bytes:
        w = Writer().raw(_STATE_MAGIC).u8(_STATE_VERSION).blob(self.config.to_bytes())
        t = self.timeouts
        timeouts = (t.advertise_keys, t.share_keys, t.masked_input, t.consistency_check, t.unmask)
        for value in timeouts:
            w.raw(struct.pack(">d", value))
        w.u8(STAGE_CODES[self.stage]).raw(struct.pack(">d", self._opened))
        w.blob(self.session_id or b"").blob((self.abort_reason or "").encode())
        w.u16(len(self._advertised))
        for ident in sorted(self._advertised):
            self._advertised[ident].write(w)
        w.ids(self._u1)
        w.u16(len(self._shares))
        for sender in sorted(self._shares):
            w.u32(sender).u16(len(self._shares[sender]))
            for recipient in sorted(self._shares[sender]):
                w.u32(recipient).blob(self._shares[sender][recipient])
        w.ids(self._u2)
        w.u16(len(self._commitments))
        for ident in sorted(self._commitments):
            w.u32(ident).raw(self._commitments[ident])
        w.ids(self._u3)
        w.u16(len(self._signatures))
        for ident in sorted(self._signatures):
            w.u32(ident).blob(self._signatures[ident])
        w.ids(self._u4)
        w.u16(len(self._responses))
        for ident in sorted(self._responses):
            shares = self._responses[ident]
            w.u32(ident).u16(len(shares))
            for peer, kind in sorted(shares):
                w.u32(peer).u8(kind).raw(shares[(peer, kind)])
        w.u8(self.result is not None)
        w.ids(sorted(self.result.faulty) if self.result is not None else ())
        vector = self.result.total if self.result is not None else self._sum
        w.u32(vector.shape[0]).raw(vector.astype("<u4", copy=False).tobytes())
        return w.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ServerSession:
        """Inverse of `to_bytes`. Input that is not exactly a state this class can reach
        (truncated, altered, reordered or internally inconsistent) raises a `SecAggError`
        (`MalformedMessage`, or `InvalidConfig` for impossible settings), never anything else,
        so a restored session can always be driven on."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise MalformedMessage(f"server state must be bytes, got {type(data).__name__}")
        r = Reader(data, "server state")
        if r.raw(4) != _STATE_MAGIC:
            raise MalformedMessage("server state: bad magic")
        if (version := r.u8()) != _STATE_VERSION:
            raise MalformedMessage(f"server state: unsupported version {version}")
        config = SessionConfig.from_bytes(r.blob())
        timeouts = StageTimeouts(*(_float(r) for _ in range(5)))
        code = r.u8()
        if code not in STAGES_BY_CODE:
            raise MalformedMessage(f"server state: unknown stage code {code}")
        opened = _float(r)
        if not math.isfinite(opened):
            raise MalformedMessage("server state: stage start time is not a finite number")
        session = cls(config, timeouts, opened)
        session.stage = STAGES_BY_CODE[code]
        session_id = r.blob(32)
        if len(session_id) not in (0, 32):
            raise MalformedMessage(f"server state: session id of {len(session_id)} bytes")
        session.session_id = session_id or None
        try:
            session.abort_reason = r.blob(_MAX_REASON_BYTES).decode() or None
        except UnicodeDecodeError:
            raise MalformedMessage("server state: abort reason is not UTF-8") from None
        advertised = [SignedKeys.read(r) for _ in range(r.u16())]
        _check_increasing([e.ident for e in advertised], "advertised keys")
        session._advertised = {e.ident: e for e in advertised}
        session._u1 = _read_set(r, "U1")
        shares: dict[int, dict[int, bytes]] = {}
        for sender in _keys(r, "share ciphertext senders"):
            row = {}
            for recipient in _keys(r, f"share ciphertexts of {sender}"):
                ct = r.blob(CIPHERTEXT_BYTES)
                if len(ct) != CIPHERTEXT_BYTES:
                    raise MalformedMessage("server state: share ciphertext of the wrong size")
                row[recipient] = ct
            shares[sender] = row
        session._shares = shares
        session._u2 = _read_set(r, "U2")
        session._commitments = {i: r.raw(32) for i in _keys(r, "seed commitments")}
        session._u3 = _read_set(r, "U3")
        session._signatures = {
            i: r.blob(P.MAX_SIGNATURE_BYTES) for i in _keys(r, "consistency signatures")
        }
        session._u4 = _read_set(r, "U4")
        responses: dict[int, dict[tuple[int, ShareKind], bytes]] = {}
        for ident in _keys(r, "unmask responses"):
            got: dict[tuple[int, ShareKind], bytes] = {}
            previous: tuple[int, int] | None = None
            for _ in range(r.u16()):
                peer, kind = r.u32(), r.u8()
                if kind not in ShareKind._value2member_map_:
                    raise MalformedMessage(f"server state: unknown share kind {kind}")
                if previous is not None and (peer, kind) <= previous:
                    raise MalformedMessage("server state: unmask shares out of order")
                previous = (peer, kind)
                got[(peer, ShareKind(kind))] = r.raw(SHARE_BYTES)
            responses[ident] = got
        session._responses = responses
        has_result = r.u8()
        if has_result not in (0, 1):
            raise MalformedMessage(f"server state: result flag {has_result}")
        faulty = _read_set(r, "faulty responders")
        length = r.u32()
        vector = np.frombuffer(r.raw(4 * length), dtype="<u4").astype(np.uint32)
        r.end()
        if has_result:
            if length != config.vector_length:
                raise MalformedMessage(f"server state: result of length {length}")
            session.result = SessionResult(vector, frozenset(session._u3), frozenset(faulty))
        else:
            if faulty:
                raise MalformedMessage("server state: faulty responders without a result")
            expected_length = config.vector_length if session.stage in _SUMMING else 0
            if length != expected_length:
                raise MalformedMessage(
                    f"server state: running sum of length {length} for its stage"
                )
            session._sum = vector
        session._validate()
        return session

    def _validate(self) -> None:
        """Refuse a restored state that the protocol cannot produce, so that driving it on
        (`tick`, `receive`) never meets a missing key or a set of the wrong size."""
        t = self.config.threshold
        problems: list[str] = []
        sets = (self._u1, self._u2, self._u3, self._u4)
        if self.stage is Stage.ABORTED:
            level = sum(1 for members in sets if members)  # the last stage opened
            if not self.abort_reason:
                problems.append("aborted without a reason")
        else:
            level = STAGE_LEVELS[self.stage]
            if self.abort_reason is not None:
                problems.append("an abort reason but not aborted")
        for k, members in enumerate(sets, start=1):
            if k <= level and len(members) < t:
                problems.append(f"U{k} has fewer than t = {t} members")
            if k > level and members:
                problems.append(f"U{k} is set before its stage")
        outer: tuple[int, ...] = self.config.participants
        for members in sets:
            if not set(members) <= set(outer):
                problems.append("participant sets do not nest")
            outer = members
        if (self.stage is Stage.DONE) != (self.result is not None):
            problems.append("a result exactly when done is required")
        if self.result is not None and not self.result.faulty <= set(self._responses):
            problems.append("faulty responders that did not respond")
        advertised = set(self._advertised)
        if not advertised <= set(self.config.participants):
            problems.append("advertised keys from non-participants")
        if level >= 1 and advertised != set(self._u1):
            problems.append("advertised keys differ from U1")
        if any(not e.signature for e in self._advertised.values()):
            problems.append("an unsigned key advertisement")
        if level == 0 and self.session_id is not None:
            problems.append("a session id before U1")
        if level >= 1 and self.session_id != P.compute_session_id(
            self._digest, {i: (e.c_pk, e.s_pk) for i, e in self._advertised.items()}
        ):
            problems.append("the session id is not the hash of U1's keys")
        if self._shares and level != 1:
            problems.append("share ciphertexts outside ShareKeys")
        for sender, row in self._shares.items():
            if sender not in self._u1 or set(row) != set(self._u1) - {sender}:
                problems.append(f"share ciphertexts of {sender} do not cover U1")
        if not _collected(set(self._commitments), level, 2, set(self._u2), set(self._u3)):
            problems.append("seed commitments do not match U2/U3")
        if not _collected(set(self._signatures), level, 3, set(self._u3), set(self._u4)):
            problems.append("consistency signatures do not match U3/U4")
        if any(not sig for sig in self._signatures.values()):
            problems.append("an empty consistency signature")
        if self._responses and level < 4:
            problems.append("unmask responses before Unmask")
        if not set(self._responses) <= set(self._u4):
            problems.append("unmask responses from outside U4")
        if self.stage is Stage.DONE and len(self._responses) < t:
            problems.append("done with fewer than t unmask responses")
        wanted = {(v, ShareKind.SELF_SEED) for v in self._u3}
        wanted |= {(v, ShareKind.MASK_KEY) for v in self._dropped()}
        for ident, got in self._responses.items():
            if set(got) != wanted:
                problems.append(f"unmask response of {ident} does not hold the requested shares")
            elif any(int.from_bytes(share, "big") >= PRIME for share in got.values()):
                problems.append(f"unmask response of {ident} holds a non-field element")
        if problems:
            raise MalformedMessage("server state is inconsistent: " + "; ".join(problems))


def _matches_commitment(
    session_id: bytes, ident: int, commitment: bytes
) -> Callable[[bytes], bool]:
    """Accepts exactly the self-mask seed that `ident` committed to in MaskedInput."""
    return lambda seed: P.seed_commitment(session_id, ident, seed) == commitment


def _matches_public_key(public: bytes) -> Callable[[bytes], bool]:
    """Accepts exactly the X25519 private keys (up to clamping) of an advertised public key."""
    return lambda private: P.x25519_public(private) == public


def _collected(
    got: set[int], level: int, stage_level: int, open_set: set[int], closed: set[int]
) -> bool:
    """What a stage collects: nothing before it opens, part of its eligible set while it is open
    (or when it aborted), exactly the next set once it has closed."""
    if level < stage_level:
        return not got
    if level == stage_level:
        return got <= open_set
    return got == closed


def _read_set(r: Reader, what: str) -> tuple[int, ...]:
    ids = tuple(r.ids())
    _check_increasing(ids, what)
    return ids


def _keys(r: Reader, what: str) -> Iterator[int]:
    """A u16 count of entries, each starting with a u32 id; ids must strictly increase."""
    previous = -1
    for _ in range(r.u16()):
        ident = r.u32()
        if ident <= previous:
            raise MalformedMessage(f"server state: {what} out of order")
        previous = ident
        yield ident


def _check_increasing(ids: Sequence[int], what: str) -> None:
    if any(b <= a for a, b in itertools.pairwise(ids)):
        raise MalformedMessage(f"server state: {what} not in strictly increasing order")


def _float(r: Reader) -> float:
    value: float = struct.unpack(">d", r.raw(8))[0]
    return value


_SUMMING = frozenset({Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK, Stage.UNMASK})
