"""A cheating coordinator driving real site agents.

The sites are real `SiteAgent`s: provisioned kits (CA, certificates, signed roster), their own
SQLite ledger, release cache and audit log, FLCHAIN hospital CSVs, Opacus for training, built
by the scale simulator's `build_agents` (so the simulator's sites face every attack here). The
harness answers for the coordinator: it builds the protobuf `Task`s a site gets from `PullTask`
and feeds them through `SiteAgent.handle`, exactly the dispatch a site runs on every answer. It
chooses every session parameter, survivor set, order and retry itself, and may run colluding
participants (roster sites whose keys it holds). Then it tries, with the project's own secagg
primitives, to compute one honest site's release from what it saw; tests compare with the true
release in the site's cache.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedctl.localfed import LocalFederation, flchain_hospitals
from federation.plan import RunPlan, parse_plan
from federation.releases import Purpose
from federation.sessions import session_config
from federation.wire.v1 import federation_pb2 as pb
from secagg import primitives as P
from secagg.client import ClientSession
from secagg.config import SessionConfig
from secagg.errors import SecAggError
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
)
from secagg.prg import apply_masks, pairwise_key, self_key
from secagg.shamir import decode_share, reconstruct
from site_agent.agent import SiteAgent
from site_agent.simulator import build_agents

WIRE_PURPOSE = {
    Purpose.STATS: pb.SECAGG_PURPOSE_FEDERATED_STATS,
    Purpose.UPDATE: pb.SECAGG_PURPOSE_MODEL_UPDATE,
    Purpose.METRICS: pb.SECAGG_PURPOSE_METRICS,
}
LOCAL_KIND = {Purpose.STATS: pb.TASK_KIND_FEDERATED_STATS, Purpose.UPDATE: pb.TASK_KIND_TRAIN}


def adversarial_plan(quorum: int = 3, rounds: int = 2) -> RunPlan:
    """The demo plan, with the quorum the default site policy accepts and one local epoch."""
    from fedctl.demo import plan_text

    text = plan_text(rounds, local_epochs=1).replace("quorum = 2 ", f"quorum = {quorum} ")
    return parse_plan(text)


@dataclass
class Consortium:
    """Provisioned kits and in-process site agents (no coordinator process: the harness is it)."""

    fed: LocalFederation
    agents: dict[str, SiteAgent]
    keys: dict[str, ec.EllipticCurvePrivateKey]
    fabricated: dict[str, str] = field(default_factory=dict)  # name → CA-signed certificate

    def certificate(self, site: str) -> str:
        if site in self.fabricated:
            return self.fabricated[site]
        return (self.fed.site_kit(site) / "client.pem").read_text()

    def fabricate(self, name: str) -> None:
        """A site certificate the consortium CA signed but provisioning never issued (the
        probe's "never-provisioned site name"); the attacker holds its key."""
        from federation.identity import Identity
        from federation.provisioning import load_ca

        issued = load_ca(self.fed.kits / "ca").issue(Identity("site", name), validity_days=30)
        key = serialization.load_pem_private_key(issued.key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.keys[name] = key
        self.fabricated[name] = issued.certificate_pem.decode()

    def close(self) -> None:
        for agent in self.agents.values():
            agent.ledger.close()
            agent.cache.close()
            agent.sessions.close()
            agent.audit.close()


def make_consortium(
    workdir: Path, sites: Iterable[str], policy: Mapping[str, object] | None = None
) -> Consortium:
    """Kits, data and real agents for `sites`; policy defaults to the product's (floor 3)."""
    names = tuple(sites)
    fed = LocalFederation(workdir, names)
    fed.prepare()
    flchain_hospitals(fed, {"min_session_sites": 3, **(policy or {})})
    # built the way the scale simulator builds its sites (`site_agent.simulator.build_agents`),
    # so every attack in this suite is also played against the simulator's sites
    built = build_agents([fed.site_kit(site) / "site.toml" for site in names])
    agents = {agent.site_id: agent for agent in built}
    assert list(agents) == list(names)
    keys = {}
    for site in names:
        key = serialization.load_pem_private_key(
            (fed.site_kit(site) / "client.key").read_bytes(), password=None
        )
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        keys[site] = key
    return Consortium(fed, agents, keys)


def audit_actions(agent: SiteAgent, action: str) -> list[dict[str, object]]:
    return [e.detail for e in agent.audit.entries(limit=100_000) if e.action == action]


class CheatingCoordinator:
    """Builds tasks as the coordinator would, but under the attacker's control."""

    def __init__(self, consortium: Consortium, plan: RunPlan, run_id: str = "run-evil") -> None:
        self.c = consortium
        self.plan = plan
        self.run_id = run_id

    def task(self, kind: int, round_: int = 0, attempt: int = 0) -> pb.Task:
        return pb.Task(
            task_id=secrets.token_hex(8),
            run_id=self.run_id,
            round=round_,
            attempt=attempt,
            kind=kind,
        )

    def send(self, site: str, task: pb.Task) -> pb.TaskResult:
        return self.c.agents[site].handle(task)

    def offer(self, sites: Iterable[str]) -> None:
        for site in sites:
            task = self.task(pb.TASK_KIND_PLAN_OFFER)
            task.plan_offer.plan_json = self.plan.canonical_json()
            result = self.send(site, task)
            assert not result.HasField("error"), result.error.message

    def prepare(self, sites: Iterable[str], purpose: Purpose, round_: int, attempt: int) -> None:
        """Ask each site for its local step (statistics, or one round of DP-SGD training; a
        training round is preceded by the statistics step, whose noised count weighted FedAvg
        uses, as an honest coordinator's run would be)."""
        for site in sites:
            task = self.task(LOCAL_KIND[purpose], round_, attempt)
            if purpose is Purpose.UPDATE:
                stats = self.send(site, self.task(LOCAL_KIND[Purpose.STATS], 0, 0))
                assert not stats.HasField("error"), stats.error.message
                from survival.spec import initial_parameters

                schema = self.plan.feature_schema
                vector = initial_parameters(
                    self.plan.model, schema.n_encoded, self.plan.time_grid.n_intervals, 0
                ).astype("<f4")
                task.train.global_vector.float32_le = vector.tobytes()
                task.train.global_vector.length = vector.size
                task.train.standardisation.features.extend(schema.encoded_names())
                task.train.standardisation.mean.extend([0.0] * schema.n_encoded)
                task.train.standardisation.scale.extend([1.0] * schema.n_encoded)
                task.train.consortium_count = 1000.0
            result = self.send(site, task)
            assert not result.HasField("error"), result.error.message

    def release(self, site: str, purpose: Purpose, round_: int) -> np.ndarray:
        """The site's true prepared release (what the attacker must never learn alone)."""
        cached = self.c.agents[site].cache.get(self.run_id, purpose.value, round_)
        assert cached is not None and cached.vector is not None
        return cached.vector

    def session(
        self,
        purpose: Purpose,
        round_: int,
        attempt: int,
        participants: Mapping[int, str],
        *,
        config: SessionConfig | None = None,
        colluders: Iterable[str] = (),
    ) -> Session:
        """A session the attacker opens; config defaults to the honest one for the plan."""
        if config is None:
            config = session_config(self.plan, self.run_id, purpose, round_, attempt, participants)
        return Session(self, purpose, round_, attempt, dict(participants), config, set(colluders))


@dataclass
class Session:
    """One session as the attacker sees it: every message any participant answered with."""

    coordinator: CheatingCoordinator
    purpose: Purpose
    round: int
    attempt: int
    participants: dict[int, str]
    config: SessionConfig
    colluders: set[str]
    adverts: dict[int, SignedKeys] = field(default_factory=dict)
    shares: dict[int, dict[int, bytes]] = field(default_factory=dict)
    masked: dict[int, MaskedInput] = field(default_factory=dict)
    signatures: dict[int, bytes] = field(default_factory=dict)
    responses: dict[int, UnmaskResponse] = field(default_factory=dict)
    refusals: dict[str, list[str]] = field(default_factory=dict)  # every refusal, in order
    session_id: bytes = b""
    clients: dict[int, ClientSession] = field(default_factory=dict)
    colluder_inputs: dict[int, np.ndarray] = field(default_factory=dict)
    # The fingerprint the attacker names each listed site by (as today's coordinator does, the
    # certificates held by the sites); None: certificates sent inside the session.
    named_by: dict[str, str] | None = None

    @property
    def ids(self) -> dict[str, int]:
        return {site: ident for ident, site in self.participants.items()}

    def _secagg_task(self, site: str, kind: int, message: bytes = b"") -> pb.Task:
        task = self.coordinator.task(kind, self.round, self.attempt)
        task.secagg.purpose = WIRE_PURPOSE[self.purpose]  # type: ignore[assignment]
        task.secagg.message = message
        return task

    def _ask(self, site: str, task: pb.Task) -> bytes | None:
        result = self.coordinator.send(site, task)
        if result.HasField("error"):
            self.refusals.setdefault(site, []).append(result.error.message)
            return None
        return bytes(result.payload)

    def advertise(
        self,
        sites: Iterable[str] | None = None,
        config_bytes: bytes | None = None,
        listed: Mapping[int, str] | None = None,
        certificates: Mapping[str, str] | None = None,
    ) -> None:
        """Send AdvertiseKeys to `sites` (default all), with the attacker's config and list."""
        listed = self.participants if listed is None else listed
        consortium = self.coordinator.c
        for site in self.participants.values() if sites is None else sites:
            ident = self.ids[site]
            if site in self.colluders:
                peers = {i: consortium.keys[s].public_key() for i, s in listed.items()}
                client = ClientSession(self.config, ident, consortium.keys[site], peers)
                self.clients[ident] = client
                self.adverts[ident] = AdvertiseKeys.decode(client.advertise_keys()).keys
                continue
            task = self._secagg_task(site, pb.TASK_KIND_SECAGG_ADVERTISE_KEYS)
            task.secagg.session_config = config_bytes or self.config.to_bytes()
            for i, s in sorted(listed.items()):
                if self.named_by is not None:
                    task.secagg.participants.add(
                        site_id=s, participant_id=i, certificate_sha256=self.named_by[s]
                    )
                    continue
                pem = (certificates or {}).get(s) or consortium.certificate(s)
                task.secagg.participants.add(site_id=s, participant_id=i, certificate_pem=pem)
            payload = self._ask(site, task)
            if payload is not None:
                self.adverts[ident] = AdvertiseKeys.decode(payload).keys

    def share_keys(self, to: Iterable[int] | None = None) -> None:
        entries = tuple(self.adverts[i] for i in sorted(self.adverts))
        self.session_id = P.compute_session_id(
            self.config.digest(), {e.ident: (e.c_pk, e.s_pk) for e in entries}
        )
        broadcast = KeyBroadcast(self.config.digest(), entries).encode()
        for ident in sorted(self.adverts) if to is None else to:
            payload = self._deliver(ident, pb.TASK_KIND_SECAGG_SHARE_KEYS, broadcast)
            if payload is not None:
                self.shares[ident] = dict(ShareKeys.decode(payload).ciphertexts)

    def masked_input(self, to: Iterable[int] | None = None) -> None:
        u2 = sorted(self.shares)
        for ident in u2 if to is None else to:
            cts = tuple((u, self.shares[u][ident]) for u in u2 if ident in self.shares[u])
            bundle = ShareBundle(self.session_id, ident, cts).encode()
            payload = self._deliver(ident, pb.TASK_KIND_SECAGG_MASKED_INPUT, bundle)
            if payload is not None:
                self.masked[ident] = MaskedInput.decode(payload, self.config.vector_length)

    def consistency(self, survivors_for: Mapping[int, Iterable[int]]) -> None:
        """Show each participant the survivor set the attacker chooses for it."""
        for ident, survivors in survivors_for.items():
            listing = SurvivorList(self.session_id, tuple(sorted(survivors))).encode()
            payload = self._deliver(ident, pb.TASK_KIND_SECAGG_CONSISTENCY_CHECK, listing)
            if payload is not None:
                self.signatures[ident] = ConsistencySignature.decode(payload).signature

    def unmask(self, requests: Mapping[int, tuple[Iterable[int], Iterable[int]]]) -> None:
        """Ask each participant to unmask with the (survivors, dropped) chosen for it."""
        for ident, (survivors, dropped) in requests.items():
            s = tuple(sorted(survivors))
            sigs = tuple((u, self.signatures[u]) for u in s if u in self.signatures)
            request = UnmaskRequest(self.session_id, s, tuple(sorted(dropped)), sigs).encode()
            payload = self._deliver(ident, pb.TASK_KIND_SECAGG_UNMASK, request)
            if payload is not None:
                self.responses[ident] = UnmaskResponse.decode(payload)

    def run_honestly(self, survivors: Iterable[int] | None = None) -> None:
        """Every stage as an honest coordinator would; `survivors` drop after MaskedInput."""
        self.advertise()
        self.share_keys()
        self.masked_input()
        u3 = sorted(self.masked) if survivors is None else sorted(survivors)
        self.consistency({u: u3 for u in u3})
        dropped = [v for v in sorted(self.shares) if v not in u3]
        self.unmask({u: (u3, dropped) for u in u3})

    def _deliver(self, ident: int, kind: int, message: bytes) -> bytes | None:
        site = self.participants[ident]
        if site in self.colluders:
            client = self.clients[ident]
            try:
                if kind == pb.TASK_KIND_SECAGG_SHARE_KEYS:
                    return client.share_keys(message)
                if kind == pb.TASK_KIND_SECAGG_MASKED_INPUT:
                    x = np.zeros(self.config.vector_length, dtype=np.uint32)
                    self.colluder_inputs[ident] = x
                    return client.masked_input(message, x)
                if kind == pb.TASK_KIND_SECAGG_CONSISTENCY_CHECK:
                    return client.consistency_check(message)
                return client.unmask(message)
            except SecAggError as exc:
                self.refusals.setdefault(site, []).append(str(exc))
                return None
        return self._ask(site, self._secagg_task(site, kind, message))

    # ------------------------------------------------------------------ what the attacker learns
    def shares_of(self, peer: int, kind: ShareKind) -> list[tuple[int, int]]:
        """Every share of `peer`'s secret of `kind` any responder revealed, as Shamir points."""
        points = []
        for responder, response in self.responses.items():
            for who, share_kind, share in response.shares:
                if who == peer and share_kind is kind:
                    points.append((responder, decode_share(share)))
        return points

    def secret(self, peer: int, kind: ShareKind) -> bytes | None:
        """The attacker's own colluders' secrets are known; otherwise ≥ t revealed shares."""
        points = self.shares_of(peer, kind)
        if len(points) < self.config.threshold:
            return None
        try:
            return reconstruct(points, self.config.threshold)
        except SecAggError:
            return None

    def recover_individual(self, target: str) -> np.ndarray | None:
        """x_target from its masked input, its self-mask seed and its masking key, if the
        attacker got all three (the split-survivor attack)."""
        ident = self.ids[target]
        masked = self.masked.get(ident)
        seed = self.secret(ident, ShareKind.SELF_SEED)
        s_sk = self.secret(ident, ShareKind.MASK_KEY)
        if masked is None or seed is None or s_sk is None:
            return None
        add: list[bytes] = []
        subtract = [self_key(seed, self.session_id, self.config.round, ident)]
        key = P.x25519_key(s_sk)
        for v in sorted(self.shares):
            if v == ident:
                continue
            shared = P.agree(key, self.adverts[v].s_pk)
            k = pairwise_key(shared, self.session_id, self.config.round, ident, v)
            (subtract if ident < v else add).append(k)
        x = masked.vector.copy()
        apply_masks(x, add, subtract)
        return x

    def recover_sum(self) -> np.ndarray | None:
        """The session's sum over its survivors, if every mask can be removed (an honest end)."""
        survivors = sorted(self.masked)
        dropped = [v for v in sorted(self.shares) if v not in self.masked]
        total = np.zeros(self.config.vector_length, dtype=np.uint32)
        add: list[bytes] = []
        subtract: list[bytes] = []
        for u in survivors:
            np.add(total, self.masked[u].vector, out=total)
            seed = self.secret(u, ShareKind.SELF_SEED)
            if seed is None:
                return None
            subtract.append(self_key(seed, self.session_id, self.config.round, u))
        for v in dropped:
            s_sk = self.secret(v, ShareKind.MASK_KEY)
            if s_sk is None:
                return None
            key = P.x25519_key(s_sk)
            for u in survivors:
                shared = P.agree(key, self.adverts[u].s_pk)
                k = pairwise_key(shared, self.session_id, self.config.round, u, v)
                (subtract if u < v else add).append(k)
        apply_masks(total, add, subtract)
        return total

    def sum_minus_colluders(self) -> np.ndarray | None:
        """The session's sum with the colluders' own (known) inputs taken out."""
        total = self.recover_sum()
        if total is None:
            return None
        for x in self.colluder_inputs.values():
            total = total - x  # uint32: wraps mod 2^32 like the masks
        return total


def learned(candidates: Iterable[np.ndarray | None], truth: np.ndarray) -> bool:
    """Whether any vector the attacker computed equals the true release."""
    return any(c is not None and np.array_equal(c, truth) for c in candidates)
