"""Session configuration, stage names and per-stage timeouts shared by client and server."""

from __future__ import annotations

import enum
import hashlib
import math
from dataclasses import dataclass

from secagg._codec import Reader, Writer
from secagg.errors import InvalidConfig, MalformedMessage

_CONFIG_MAGIC = b"SACF"
_CONFIG_VERSION = 1
MAX_PARTICIPANT_ID = 2**32 - 1
MAX_PARTICIPANTS = 65_535
MAX_VECTOR_LENGTH = 2**31 - 1
MAX_CONTEXT = 4096


class Stage(enum.Enum):
    """Protocol stages in order; DONE and ABORTED are terminal."""

    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY_CHECK = "consistency_check"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


STAGE_CODES: dict[Stage, int] = {stage: index for index, stage in enumerate(Stage)}
STAGES_BY_CODE: dict[int, Stage] = {index: stage for stage, index in STAGE_CODES.items()}
# How far a session has got: the stages in protocol order (ABORTED can follow any of them).
STAGE_LEVELS: dict[Stage, int] = {
    Stage.ADVERTISE_KEYS: 0,
    Stage.SHARE_KEYS: 1,
    Stage.MASKED_INPUT: 2,
    Stage.CONSISTENCY_CHECK: 3,
    Stage.UNMASK: 4,
    Stage.DONE: 5,
}


@dataclass(frozen=True)
class SessionConfig:
    """Everything both sides must agree on; its digest is signed by every client."""

    context: bytes
    round: int
    threshold: int
    participants: tuple[int, ...]
    vector_length: int

    def __post_init__(self) -> None:
        if not isinstance(self.context, bytes) or len(self.context) > MAX_CONTEXT:
            raise InvalidConfig(f"context must be bytes of at most {MAX_CONTEXT} bytes")
        if not isinstance(self.round, int) or not 0 <= self.round < 2**63:
            raise InvalidConfig(f"round must be an integer in [0, 2^63), got {self.round!r}")
        ids = self.participants
        if not isinstance(ids, tuple) or not all(isinstance(i, int) for i in ids):
            raise InvalidConfig("participants must be a tuple of integer ids")
        if len(ids) > MAX_PARTICIPANTS:
            raise InvalidConfig(f"at most {MAX_PARTICIPANTS} participants, got {len(ids)}")
        if any(not 1 <= i <= MAX_PARTICIPANT_ID for i in ids):
            raise InvalidConfig(f"participant ids must be in [1, 2^32), got {sorted(ids)}")
        if len(set(ids)) != len(ids):
            raise InvalidConfig(f"participant ids must be unique, got {list(ids)}")
        if list(ids) != sorted(ids):
            raise InvalidConfig(f"participant ids must be sorted, got {list(ids)}")
        if not isinstance(self.threshold, int) or not 2 <= self.threshold <= len(ids):
            raise InvalidConfig(
                f"threshold must satisfy 2 <= t <= n = {len(ids)}, got {self.threshold!r}"
            )
        if not isinstance(self.vector_length, int) or not (
            0 < self.vector_length <= MAX_VECTOR_LENGTH
        ):
            raise InvalidConfig(f"vector_length must be in [1, 2^31), got {self.vector_length!r}")

    @property
    def n(self) -> int:
        return len(self.participants)

    def to_bytes(self) -> bytes:
        w = Writer().raw(_CONFIG_MAGIC).u8(_CONFIG_VERSION).blob(self.context)
        w.u64(self.round).u16(self.threshold).u32(self.vector_length).ids(self.participants)
        return w.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionConfig:
        r = Reader(data, "session config")
        if r.raw(4) != _CONFIG_MAGIC:
            raise MalformedMessage("session config: bad magic")
        version = r.u8()
        if version != _CONFIG_VERSION:
            raise MalformedMessage(f"session config: unsupported version {version}")
        context = r.blob(MAX_CONTEXT)
        round_, threshold, length = r.u64(), r.u16(), r.u32()
        participants = tuple(r.ids())
        r.end()
        return cls(context, round_, threshold, participants, length)

    def digest(self) -> bytes:
        """SHA-256 of the encoding: what clients sign, so no field can differ between them."""
        return hashlib.sha256(b"concordia-secagg-v1/config\x00" + self.to_bytes()).digest()


@dataclass(frozen=True)
class StageTimeouts:
    """Seconds each stage stays open after it starts (the caller owns the clock)."""

    advertise_keys: float
    share_keys: float
    masked_input: float
    consistency_check: float
    unmask: float

    def __post_init__(self) -> None:
        for name in ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmask"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise InvalidConfig(f"timeout {name} must be a finite number >= 0, got {value!r}")

    def for_stage(self, stage: Stage) -> float:
        value: float = getattr(self, stage.value)
        return value
