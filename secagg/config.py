"""Session configuration, stage names and per-stage timeouts shared by client and server."""

from __future__ import annotations

import enum
import functools
import hashlib
import math
from dataclasses import dataclass

from secagg._codec import Reader, Writer
from secagg.errors import InvalidConfig, MalformedMessage
from secagg.graph import harary_graph

_CONFIG_MAGIC = b"SACF"
_CONFIG_VERSION = 1  # all-pairs masking (the encoding every earlier session used)
_CONFIG_VERSION_SPARSE = 2  # version 1 followed by the degree k and neighbourhood threshold
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
    """Everything both sides must agree on; its digest is signed by every client.

    `neighbours` = 0 is all-pairs masking; k > 0 is sparse masking (SecAgg+) over the Harary graph
    that `graph` derives from this config alone, with secrets shared among each participant's
    closed neighbourhood and rebuilt from `neighbour_threshold` of its shares. `threshold` stays
    the global bound: the fewest participants at any stage and consistency signatures needed.
    """

    context: bytes
    round: int
    threshold: int
    participants: tuple[int, ...]
    vector_length: int
    neighbours: int = 0
    neighbour_threshold: int = 0

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
        k, t_k = self.neighbours, self.neighbour_threshold
        if not isinstance(k, int) or not isinstance(t_k, int):
            raise InvalidConfig("neighbours and neighbour_threshold must be integers")
        if k == 0 and t_k != 0:
            raise InvalidConfig("neighbour_threshold is for sparse masking only (neighbours > 0)")
        if k != 0 and (k % 2 or not 2 <= k < len(ids) or not 2 <= t_k <= k):
            raise InvalidConfig(
                f"sparse masking needs an even degree 2 <= k < n = {len(ids)} and a neighbourhood"
                f" threshold 2 <= t_k <= k, got k = {k!r}, t_k = {t_k!r}"
            )

    @property
    def n(self) -> int:
        return len(self.participants)

    @property
    def sparse(self) -> bool:
        return self.neighbours > 0

    @property
    def share_threshold(self) -> int:
        """Shares needed to rebuild one participant's secret (t_k sparse, t all-pairs)."""
        return self.neighbour_threshold if self.sparse else self.threshold

    def graph(self) -> dict[int, frozenset[int]] | None:
        """The neighbour graph (None all-pairs): a pure function of this config's digest."""
        return dict(self._graph) if self._graph is not None else None

    @functools.cached_property
    def _graph(self) -> dict[int, frozenset[int]] | None:
        if not self.sparse:
            return None
        return harary_graph(self.digest(), self.participants, self.neighbours)

    @functools.cached_property
    def _scopes(self) -> dict[int, frozenset[int]]:
        everyone = frozenset(self.participants)
        if self._graph is None:
            return dict.fromkeys(self.participants, everyone)
        return {v: near | {v} for v, near in self._graph.items()}

    def scope(self, ident: int) -> frozenset[int]:
        """Who holds shares of `ident`'s secrets and masks with it: its closed neighbourhood
        N[ident] when sparse, every participant all-pairs."""
        return self._scopes[ident]

    def to_bytes(self) -> bytes:
        version = _CONFIG_VERSION_SPARSE if self.sparse else _CONFIG_VERSION
        w = Writer().raw(_CONFIG_MAGIC).u8(version).blob(self.context)
        w.u64(self.round).u16(self.threshold).u32(self.vector_length).ids(self.participants)
        if self.sparse:
            w.u16(self.neighbours).u16(self.neighbour_threshold)
        return w.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionConfig:
        r = Reader(data, "session config")
        if r.raw(4) != _CONFIG_MAGIC:
            raise MalformedMessage("session config: bad magic")
        version = r.u8()
        if version not in (_CONFIG_VERSION, _CONFIG_VERSION_SPARSE):
            raise MalformedMessage(f"session config: unsupported version {version}")
        context = r.blob(MAX_CONTEXT)
        round_, threshold, length = r.u64(), r.u16(), r.u32()
        participants = tuple(r.ids())
        k, t_k = (r.u16(), r.u16()) if version == _CONFIG_VERSION_SPARSE else (0, 0)
        r.end()
        config = cls(context, round_, threshold, participants, length, k, t_k)
        if version == _CONFIG_VERSION_SPARSE and not config.sparse:
            raise MalformedMessage("session config: a sparse encoding with degree 0")
        return config

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
