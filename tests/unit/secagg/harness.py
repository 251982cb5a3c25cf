"""A tiny in-memory federation driving real ClientSession/ServerSession objects (no mocks)."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric import ec

from secagg.client import ClientSession
from secagg.config import SessionConfig, Stage, StageTimeouts
from secagg.server import Outbound, ServerSession

TIMEOUTS = StageTimeouts(10.0, 10.0, 10.0, 10.0, 10.0)
ORDER = (
    Stage.ADVERTISE_KEYS,
    Stage.SHARE_KEYS,
    Stage.MASKED_INPUT,
    Stage.CONSISTENCY_CHECK,
    Stage.UNMASK,
)


@functools.lru_cache(maxsize=64)
def identity_key(ident: int) -> ec.EllipticCurvePrivateKey:
    """Long-term identity keys are expensive to make; reuse one per id across tests."""
    return ec.generate_private_key(ec.SECP256R1())


def public_keys(ids: Iterable[int]) -> dict[int, ec.EllipticCurvePublicKey]:
    return {i: identity_key(i).public_key() for i in ids}


def make_config(
    n: int, t: int, d: int, round_: int = 3, context: bytes = b"run-1"
) -> SessionConfig:
    return SessionConfig(context, round_, t, tuple(range(1, n + 1)), d)


def random_inputs(config: SessionConfig, seed: int) -> dict[int, npt.NDArray[np.uint32]]:
    rng = np.random.default_rng(seed)
    d = config.vector_length
    return {i: rng.integers(0, 2**32, d, dtype=np.uint32) for i in config.participants}


def server_state(server: ServerSession) -> dict[str, Any]:
    """Everything a ServerSession holds, as comparable values (arrays as dtype and bytes): two
    equal snapshots mean the session did not change."""

    def plain(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return (str(value.dtype), value.shape, value.tobytes())
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if hasattr(value, "__dataclass_fields__"):
            return plain(vars(value))
        return copy.deepcopy(value)

    return {name: plain(value) for name, value in vars(server).items()}


def exact_sum(inputs: dict[int, npt.NDArray[np.uint32]], ids: Iterable[int], d: int) -> np.ndarray:
    total = np.zeros(d, dtype=np.uint64)
    for i in ids:
        total += inputs[i]
    return (total % 2**32).astype(np.uint32)


@dataclass
class Federation:
    """Clients and a server wired together; `drops[stage]` are ids that go silent at `stage`."""

    config: SessionConfig
    inputs: dict[int, npt.NDArray[np.uint32]]
    drops: dict[Stage, set[int]] = field(default_factory=dict)
    # round-trip every client state through to_bytes/from_bytes between steps (a site saves its
    # sessions; the server's session lives in memory only)
    persist: bool = False
    now: float = 0.0

    def __post_init__(self) -> None:
        ids = self.config.participants
        self.peers = public_keys(ids)
        self.clients = {i: ClientSession(self.config, i, identity_key(i), self.peers) for i in ids}
        self.server = ServerSession(self.config, TIMEOUTS, self.now)
        self.silent: set[int] = set()
        self.uploaded = dict.fromkeys(ids, 0)  # bytes each client sent

    def _client(self, ident: int) -> ClientSession:
        if self.persist:
            blob = self.clients[ident].to_bytes()
            self.clients[ident] = ClientSession.from_bytes(blob, identity_key(ident), self.peers)
        return self.clients[ident]

    def _act(self, stage: Stage, ident: int, payload: bytes) -> bytes:
        reply = self._reply(stage, ident, payload)
        self.uploaded[ident] += len(reply)
        return reply

    def _reply(self, stage: Stage, ident: int, payload: bytes) -> bytes:
        client = self._client(ident)
        if stage is Stage.ADVERTISE_KEYS:
            return client.advertise_keys()
        if stage is Stage.SHARE_KEYS:
            return client.share_keys(payload)
        if stage is Stage.MASKED_INPUT:
            return client.masked_input(payload, self.inputs[ident])
        if stage is Stage.CONSISTENCY_CHECK:
            return client.consistency_check(payload)
        return client.unmask(payload)

    def run(
        self,
        tamper: Callable[[Outbound], bytes] | None = None,
    ) -> ServerSession:
        """Run every stage; whoever drops at a stage never answers again. `tamper` may rewrite
        what the server sends (a cheating coordinator)."""
        outbound = [Outbound(i, Stage.ADVERTISE_KEYS, b"") for i in self.config.participants]
        for stage in ORDER:
            outbound = self.run_stage(stage, outbound, tamper)
            if self.server.stage in (Stage.ABORTED, Stage.DONE):
                break
        return self.server

    def run_stage(
        self,
        stage: Stage,
        outbound: list[Outbound],
        tamper: Callable[[Outbound], bytes] | None = None,
    ) -> list[Outbound]:
        """Deliver `outbound` for `stage`, return the replies to the server, close the stage."""
        self.silent |= self.drops.get(stage, set())
        for message in outbound:
            if message.recipient in self.silent:
                continue
            payload = tamper(message) if tamper is not None else message.payload
            reply = self._act(stage, message.recipient, payload)
            self.server.receive(message.recipient, reply, self.now)
        server = self.server
        result = server.tick(self.now)
        if server.stage is stage:  # someone is silent: wait for the deadline
            self.now += TIMEOUTS.for_stage(stage)
            result = server.tick(self.now)
        return result

    def step_to(self, stage: Stage) -> dict[int, bytes]:
        """Run the honest protocol up to `stage`; return what the server sends for it."""
        outbound = [Outbound(i, Stage.ADVERTISE_KEYS, b"") for i in self.config.participants]
        for current in ORDER:
            if current is stage:
                return {m.recipient: m.payload for m in outbound}
            outbound = self.run_stage(current, outbound)
        raise AssertionError(f"{stage} is not a client stage")

    def act(self, stage: Stage, ident: int, payload: bytes) -> bytes:
        return self._act(stage, ident, payload)
