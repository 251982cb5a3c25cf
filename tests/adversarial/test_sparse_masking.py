"""Sparse masking (SecAgg+) through real site agents: an exact sum with a dropout, and a
coordinator that tries to choose the neighbour graph.

Six real `SiteAgent`s (own kits, ledgers, caches, audit logs) answer a statistics session whose
coordinator side is the real `secagg.server.ServerSession`. The attack: under an all-pairs plan,
the coordinator offers a sparse config of degree 2 (each site masks with two others), makes one
of the target's two neighbours a colluder and declares the other dropped; the target's own share
and the colluder's then rebuild its self-mask seed, the honest holders rebuild the dropped
neighbour's masking key, and the target's release is unmasked alone. The sites refuse the
config (its graph parameters are not the plan's); the control takes the config as sent and
shows the attack recovers the release.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedctl.demo import plan_text
from federation.plan import RunPlan, parse_plan
from federation.releases import Purpose
from federation.sessions import session_config, session_context
from federation.wire.v1 import federation_pb2 as pb
from secagg import primitives as P
from secagg.config import SessionConfig, Stage, StageTimeouts
from secagg.messages import AdvertiseKeys, ShareKind
from secagg.prg import apply_masks, pairwise_key, self_key
from secagg.server import ServerSession
from secagg.shamir import reconstruct
from site_agent import secagg_adapter
from tests.adversarial.harness import (
    CheatingCoordinator,
    Consortium,
    Session,
    audit_actions,
    learned,
    make_consortium,
)

pytestmark = [pytest.mark.integration, pytest.mark.adversarial]

SIX = tuple(f"hospital-{c}" for c in "abcdef")
PARTICIPANTS = dict(enumerate(SIX, start=1))
KINDS = {
    Stage.SHARE_KEYS: pb.TASK_KIND_SECAGG_SHARE_KEYS,
    Stage.MASKED_INPUT: pb.TASK_KIND_SECAGG_MASKED_INPUT,
    Stage.CONSISTENCY_CHECK: pb.TASK_KIND_SECAGG_CONSISTENCY_CHECK,
    Stage.UNMASK: pb.TASK_KIND_SECAGG_UNMASK,
}
_runs = iter(range(1, 1000))


@pytest.fixture(scope="module")
def six(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    workdir: Path = tmp_path_factory.mktemp("sparse") / "fed"
    built = make_consortium(workdir, SIX, {"lifetime_epsilon": 10_000.0})
    try:
        yield built
    finally:
        built.close()


def _plan(sparse: bool) -> RunPlan:
    text = plan_text(1, local_epochs=1).replace("quorum = 2 ", "quorum = 3 ")
    if sparse:
        text = text.replace("[secagg]\n", '[secagg]\nmasking = "sparse"\nneighbours = 2\n')
    return parse_plan(text)


def _coordinator(consortium: Consortium, sparse: bool) -> CheatingCoordinator:
    evil = CheatingCoordinator(consortium, _plan(sparse), f"run-sparse-{next(_runs)}")
    evil.offer(SIX)
    evil.prepare(SIX, Purpose.STATS, 0, 0)
    return evil


def _drive(session: Session, dropped: set[int]) -> ServerSession:
    """The real ServerSession as the coordinator; `dropped` go silent after ShareKeys."""
    config = session.config
    server = ServerSession(config, StageTimeouts(1.0, 1.0, 1.0, 1.0, 1.0), 0.0)
    now = 0.0
    session.advertise()
    assert not session.refusals, session.refusals
    for ident, keys in session.adverts.items():
        server.receive(ident, AdvertiseKeys(config.digest(), keys).encode(), now)
    outbound = server.tick(now)
    while server.stage in KINDS:
        stage = server.stage
        for message in outbound:
            if stage is not Stage.SHARE_KEYS and message.recipient in dropped:
                continue
            reply = session._deliver(message.recipient, KINDS[stage], message.payload)
            assert reply is not None, session.refusals
            server.receive(message.recipient, reply, now)
        now += 2.0
        outbound = server.tick(now)
    return server


def test_a_sparse_session_with_a_dropout_gives_the_exact_sum(six: Consortium) -> None:
    evil = _coordinator(six, sparse=True)
    session = evil.session(Purpose.STATS, 0, 0, PARTICIPANTS)
    config = session.config
    assert (config.neighbours, config.neighbour_threshold) == (2, 2)
    graph = config.graph()
    assert graph is not None
    server = _drive(session, dropped={4})
    assert server.stage is Stage.DONE and server.result is not None, server.abort_reason
    assert server.result.survivors == frozenset(PARTICIPANTS) - {4}
    total = np.zeros(config.vector_length, dtype=np.uint64)
    for ident in server.result.survivors:
        total += evil.release(PARTICIPANTS[ident], Purpose.STATS, 0)
    np.testing.assert_array_equal(server.result.total, (total % 2**32).astype(np.uint32))
    # each site encrypted shares for its two neighbours only, never for all five peers
    for ident, cts in session.shares.items():
        assert set(cts) == graph[ident]


def _degree_two_attack(
    evil: CheatingCoordinator, offered: SessionConfig
) -> tuple[Session, dict[int, bytes]]:
    """Collude with one neighbour of site 1, drop the other; return the session and the
    colluder's masking key (read before its session wipes it at Unmask)."""
    graph = offered.graph()
    assert graph is not None
    target = 1
    colluder, dropped = sorted(graph[target])
    session = evil.session(
        Purpose.STATS, 0, 0, PARTICIPANTS, config=offered, colluders=[PARTICIPANTS[colluder]]
    )
    session.advertise()
    session.share_keys()
    colluder_key = session.clients[colluder]._s_sk if colluder in session.clients else b""
    session.masked_input(to=[i for i in sorted(session.shares) if i != dropped])
    survivors = sorted(session.masked)
    session.consistency({u: survivors for u in survivors})
    session.unmask({u: (survivors, [dropped]) for u in survivors})
    return session, {colluder: colluder_key}


def _recover(session: Session, target: int, colluder_keys: dict[int, bytes]) -> np.ndarray | None:
    """x_target from what the attacker saw, reconstructing with the config's t_k."""
    config, sid = session.config, session.session_id
    graph, t_k = config.graph(), config.share_threshold
    masked = session.masked.get(target)
    if graph is None or masked is None:
        return None

    def secret(peer: int, kind: ShareKind) -> bytes | None:
        points = session.shares_of(peer, kind)
        return reconstruct(points, t_k) if len(points) >= t_k else None

    seed = secret(target, ShareKind.SELF_SEED)
    if seed is None:
        return None
    add: list[bytes] = []
    subtract = [self_key(seed, sid, config.round, target)]
    for v in sorted(graph[target] & set(session.shares)):
        private = colluder_keys.get(v) or secret(v, ShareKind.MASK_KEY)
        if not private:
            return None
        shared = P.agree(P.x25519_key(private), session.adverts[target].s_pk)
        key = pairwise_key(shared, sid, config.round, target, v)
        (subtract if target < v else add).append(key)
    x = masked.vector.copy()
    apply_masks(x, add, subtract)
    return x


def _sparse_offer(evil: CheatingCoordinator) -> SessionConfig:
    honest = session_config(evil.plan, evil.run_id, Purpose.STATS, 0, 0, PARTICIPANTS)
    assert not honest.sparse  # the plan is all-pairs: t = 4 of 6, masks with all five peers
    return replace(honest, neighbours=2, neighbour_threshold=2)


def test_a_coordinator_chosen_degree_is_refused(six: Consortium) -> None:
    evil = _coordinator(six, sparse=False)
    session = evil.session(Purpose.STATS, 0, 0, PARTICIPANTS, config=_sparse_offer(evil))
    session.advertise()
    assert set(session.refusals) == set(SIX) and not session.adverts
    for site in SIX:
        assert any("neighbours 2 (this site derives 0)" in m for m in session.refusals[site])
        reasons = [str(e["reason"]) for e in audit_actions(six.agents[site], "secagg_refused")]
        assert any("neighbour_threshold 2" in r for r in reasons)


def test_control_a_coordinator_chosen_degree_isolates_one_release(
    six: Consortium, monkeypatch: pytest.MonkeyPatch
) -> None:
    evil = _coordinator(six, sparse=False)
    offered = _sparse_offer(evil)
    monkeypatch.setattr(secagg_adapter, "derive_config", lambda *args: offered)
    session, keys = _degree_two_attack(evil, offered)
    assert learned([_recover(session, 1, keys)], evil.release(SIX[0], Purpose.STATS, 0))


def test_another_neighbour_graph_is_refused(six: Consortium) -> None:
    """The graph is drawn from the config's digest: a coordinator that wants other neighbours
    for the same step must change the config (here: the context of another attempt)."""
    evil = _coordinator(six, sparse=True)
    honest = session_config(evil.plan, evil.run_id, Purpose.STATS, 0, 0, PARTICIPANTS)
    context = session_context(evil.plan, evil.run_id, Purpose.STATS, 0, 1, PARTICIPANTS)
    offered = replace(honest, context=context)
    assert offered.graph() != honest.graph()
    session = evil.session(Purpose.STATS, 0, 0, PARTICIPANTS, config=offered)
    session.advertise()
    assert set(session.refusals) == set(SIX) and not session.adverts
    assert all(any("context" in m for m in session.refusals[site]) for site in SIX)
