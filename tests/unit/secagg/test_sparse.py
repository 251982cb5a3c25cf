"""Sparse masking (SecAgg+): exact sums under random dropouts while every neighbourhood keeps
t_k survivors, a loud abort otherwise, the double-masking rule per neighbourhood, and a graph
that is a pure function of the public session config."""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg.client import ClientSession
from secagg.config import SessionConfig, Stage
from secagg.errors import InvalidConfig, ProtocolViolation, SecAggError, WrongSession
from secagg.graph import choose_sparse, failure_bounds, harary_graph
from secagg.messages import ShareBundle, ShareKeys, ShareKind, UnmaskRequest, UnmaskResponse
from secagg.server import Outbound
from tests.unit.secagg.harness import (
    ORDER,
    Federation,
    exact_sum,
    identity_key,
    public_keys,
    random_inputs,
)

pytestmark = pytest.mark.unit


def sparse_config(
    n: int, t: int, k: int, t_k: int, d: int = 8, context: bytes = b"run-1", round_: int = 3
) -> SessionConfig:
    return SessionConfig(context, round_, t, tuple(range(1, n + 1)), d, k, t_k)


class RefusingFederation(Federation):
    """A client that refuses a message (a typed SecAggError) goes silent, as a site would; every
    unmask response is kept so the test can check what was revealed."""

    revealed: list[tuple[int, int, ShareKind]]

    def run_stage(
        self, stage: Stage, outbound: list[Outbound], tamper: object = None
    ) -> list[Outbound]:
        if not hasattr(self, "revealed"):
            self.revealed = []
        self.silent |= self.drops.get(stage, set())
        for message in outbound:
            if message.recipient in self.silent:
                continue
            try:
                reply = self._act(stage, message.recipient, message.payload)
            except SecAggError:
                self.silent.add(message.recipient)
                continue
            if stage is Stage.UNMASK:
                response = UnmaskResponse.decode(reply)
                self.revealed += [(response.sender, v, kind) for v, kind, _ in response.shares]
            self.server.receive(message.recipient, reply, self.now)
        if self.server.stage is stage and self.server.expected():
            self.now += 10.0
        return self.server.tick(self.now)


@st.composite
def sparse_scenarios(
    draw: st.DrawFn, max_n: int = 18
) -> tuple[SessionConfig, dict[Stage, set[int]], int]:
    n = draw(st.integers(6, max_n))
    k = 2 * draw(st.integers(1, (n - 2) // 2))
    t_k = draw(st.integers(2, k))
    t = draw(st.integers(2, max(2, n // 2)))
    config = sparse_config(
        n, t, k, t_k, d=draw(st.integers(1, 24)), round_=draw(st.integers(0, 99))
    )
    ids = list(config.participants)
    drops = {
        stage: set(draw(st.lists(st.sampled_from(ids), max_size=max(1, n // 5)))) for stage in ORDER
    }
    return config, drops, draw(st.integers(0, 2**32 - 1))


def _neighbourhoods_hold(
    config: SessionConfig, drops: dict[Stage, set[int]]
) -> tuple[bool, set[int]]:
    """The model: (the session must succeed, its U3). It must when every stage keeps ≥ t and
    every U2 member's closed neighbourhood keeps ≥ t_k unmask responders (U5)."""
    alive, sets = set(config.participants), []
    for stage in ORDER:
        alive = alive - drops[stage]
        sets.append(set(alive))
    u2, u3, u5 = sets[1], sets[2], sets[4]
    enough = all(len(s) >= config.threshold for s in sets)
    local = all(len(config.scope(v) & u5) >= config.neighbour_threshold for v in u2)
    return enough and local, u3


def _check(config: SessionConfig, drops: dict[Stage, set[int]], seed: int, persist: bool) -> None:
    inputs = random_inputs(config, seed)
    fed = RefusingFederation(config, inputs, drops=drops, persist=persist)
    server = fed.run()
    must_finish, u3 = _neighbourhoods_hold(config, drops)
    kinds: dict[int, set[ShareKind]] = {}
    for holder, v, kind in fed.revealed:
        assert holder in config.scope(v), "a share left the owner's neighbourhood"
        kinds.setdefault(v, set()).add(kind)
    assert all(len(k) == 1 for k in kinds.values()), "both kinds of share revealed for one client"
    if must_finish:
        assert server.stage is Stage.DONE, server.abort_reason
        assert server.result is not None and server.result.survivors == frozenset(u3)
    if server.stage is Stage.DONE:
        assert server.result is not None
        total = exact_sum(inputs, server.result.survivors, config.vector_length)
        np.testing.assert_array_equal(server.result.total, total)
    else:
        assert server.stage is Stage.ABORTED and server.abort_reason


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sparse_scenarios())
def test_exact_sum_while_neighbourhoods_keep_t_k_or_loud_abort(
    scenario: tuple[SessionConfig, dict[Stage, set[int]], int],
) -> None:
    _check(*scenario, persist=False)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sparse_scenarios(max_n=10))
def test_same_with_every_state_round_tripped(
    scenario: tuple[SessionConfig, dict[Stage, set[int]], int],
) -> None:
    _check(*scenario, persist=True)


def test_a_neighbourhood_below_t_k_aborts_with_the_reason() -> None:
    config = sparse_config(12, 3, 4, 4)
    victim = 1
    near = sorted(config.scope(victim) - {victim})
    # the victim's neighbours answer MaskedInput, then two go silent before unmasking
    fed = RefusingFederation(config, random_inputs(config, 1), drops={Stage.UNMASK: set(near[:2])})
    server = fed.run()
    assert server.stage is Stage.ABORTED and server.result is None
    assert server.abort_reason is not None and "neighbourhoods of" in server.abort_reason


def _sparse_unmask() -> tuple[Federation, int, int, UnmaskRequest]:
    config = sparse_config(12, 3, 4, 2)
    dropped = 5
    holder = min(config.scope(dropped) - {dropped})
    fed = Federation(config, random_inputs(config, 2), drops={Stage.MASKED_INPUT: {dropped}})
    request = UnmaskRequest.decode(fed.step_to(Stage.UNMASK)[holder])
    assert dropped in request.dropped
    return fed, holder, dropped, request


def test_both_shares_of_a_neighbour_are_refused() -> None:
    fed, holder, dropped, request = _sparse_unmask()
    survivor = min(fed.config.scope(holder) - {holder, dropped})
    bad = replace(request, dropped=tuple(sorted({*request.dropped, survivor})))
    with pytest.raises(ProtocolViolation, match="both as survivor"):
        fed.clients[holder].unmask(bad.encode())


def test_a_response_reveals_only_the_neighbourhood_and_one_kind_each() -> None:
    fed, holder, dropped, request = _sparse_unmask()
    response = UnmaskResponse.decode(fed.clients[holder].unmask(request.encode()))
    scope = fed.config.scope(holder)
    assert {v for v, _, _ in response.shares} <= scope
    assert {(v, kind) for v, kind, _ in response.shares if v == dropped} == {
        (dropped, ShareKind.MASK_KEY)
    }
    assert all(kind is ShareKind.SELF_SEED for v, kind, _ in response.shares if v != dropped)


def test_a_share_bundle_from_a_non_neighbour_is_refused() -> None:
    config = sparse_config(12, 3, 4, 2)
    fed = Federation(config, random_inputs(config, 3))
    bundles = fed.step_to(Stage.MASKED_INPUT)
    me = 1
    stranger = min(set(config.participants) - config.scope(me))
    # a ciphertext the coordinator moves from the stranger's bundle into mine
    theirs = ShareBundle.decode(bundles[stranger])
    mine = ShareBundle.decode(bundles[me])
    extra = next(ct for sender, ct in theirs.ciphertexts if sender != me)
    forged = replace(mine, ciphertexts=(*mine.ciphertexts, (stranger, extra)))
    with pytest.raises(ProtocolViolation, match="not a neighbour"):
        fed.clients[me].masked_input(forged.encode(), fed.inputs[me])


def test_the_server_refuses_shares_sent_outside_the_neighbourhood() -> None:
    config = sparse_config(12, 3, 4, 2)
    fed = Federation(config, random_inputs(config, 4))
    broadcast = fed.step_to(Stage.SHARE_KEYS)
    honest = ShareKeys.decode(fed.act(Stage.SHARE_KEYS, 1, broadcast[1]))
    stranger = min(set(config.participants) - config.scope(1))
    padded = replace(
        honest, ciphertexts=(*honest.ciphertexts, (stranger, honest.ciphertexts[0][1]))
    )
    with pytest.raises(ProtocolViolation, match="one ciphertext for each of"):
        fed.server.receive(1, padded.encode(), fed.now)


@pytest.mark.parametrize(
    "change",
    [{"neighbours": 6}, {"neighbour_threshold": 3}, {"neighbours": 0, "neighbour_threshold": 0}],
)
def test_a_client_refuses_a_broadcast_for_other_graph_parameters(change: dict[str, int]) -> None:
    mine = sparse_config(12, 3, 4, 2)
    other = SessionConfig(
        mine.context,
        mine.round,
        mine.threshold,
        mine.participants,
        mine.vector_length,
        change.get("neighbours", mine.neighbours),
        change.get("neighbour_threshold", mine.neighbour_threshold),
    )
    theirs = Federation(other, random_inputs(other, 5)).step_to(Stage.SHARE_KEYS)
    fed = Federation(mine, random_inputs(mine, 5))
    fed.step_to(Stage.SHARE_KEYS)
    with pytest.raises(WrongSession, match="another session configuration"):
        fed.clients[1].share_keys(theirs[1])


@pytest.mark.parametrize(("k", "t_k"), [(3, 2), (12, 2), (0, 2), (4, 1), (4, 5), (-2, 2)])
def test_invalid_graph_parameters_are_refused(k: int, t_k: int) -> None:
    with pytest.raises(InvalidConfig):
        sparse_config(12, 3, k, t_k)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(4, 60),
    half=st.integers(1, 29),
    context=st.binary(max_size=40),
    other=st.binary(max_size=40),
)
def test_the_graph_is_a_pure_regular_symmetric_function_of_the_config(
    n: int, half: int, context: bytes, other: bytes
) -> None:
    k = 2 * min(half, (n - 1) // 2)
    config = sparse_config(n, 2, k, 2, context=context)
    graph = config.graph()
    assert graph is not None
    again = SessionConfig.from_bytes(config.to_bytes()).graph()
    assert again == graph == harary_graph(config.digest(), config.participants, k)
    for v, near in graph.items():
        assert len(near) == k and v not in near and all(v in graph[u] for u in near)
    if n >= 16 and k <= n // 2 and other != context:
        # another session id, another graph (equal by chance: 2n of the n! ring orders)
        assert sparse_config(n, 2, k, 2, context=other).graph() != graph


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(8, 160),
    colluding_fraction=st.floats(0.0, 0.25),
    dropout=st.floats(0.01, 0.2),
)
def test_the_chosen_degree_is_the_smallest_meeting_both_bounds(
    n: int, colluding_fraction: float, dropout: float
) -> None:
    c = int(colluding_fraction * n)
    chosen = choose_sparse(n, c, dropout)
    sec, cor = Fraction(1, 2**40), Fraction(1, 2**20)

    def meets(k: int) -> bool:
        lowest = max(2, math.ceil(2 * (k + 1) / 3))
        return any(
            failure_bounds(n, c, dropout, k, t_k)[0] <= sec
            and failure_bounds(n, c, dropout, k, t_k)[1] <= cor
            for t_k in range(lowest, k + 1)
        )

    smaller = range(2, n - 1 if chosen is None else chosen[0], 2)
    assert not any(meets(k) for k in smaller)
    if chosen is not None:
        k, t_k = chosen
        s, r = failure_bounds(n, c, dropout, k, t_k)
        assert s <= sec and r <= cor and k % 2 == 0 and k < n - 1


class _Recorder(Federation):
    """Records client 1's state before each of its steps, with the payload it then got."""

    seen: list[tuple[bytes, Stage, bytes]]

    def _reply(self, stage: Stage, ident: int, payload: bytes) -> bytes:
        if ident == 1:
            self.seen.append((self.clients[1].to_bytes(), stage, payload))
        return super()._reply(stage, ident, payload)


def _sparse_states() -> tuple[SessionConfig, list[tuple[bytes, Stage, bytes]]]:
    config = sparse_config(8, 3, 4, 3, d=6)
    near = sorted(config.scope(1) - {1})
    seen: list[tuple[bytes, Stage, bytes]] = []
    for drops in ({}, {Stage.MASKED_INPUT: {near[0]}}, {Stage.UNMASK: {near[1]}}):
        fed = _Recorder(config, random_inputs(config, 9), drops=drops)
        fed.seen = []
        fed.run()
        seen += fed.seen
    return config, seen


SPARSE_CONFIG, SPARSE_STATES = _sparse_states()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_corrupted_sparse_client_state_is_refused_or_restores_exactly_and_runs_on(
    data: st.DataObject,
) -> None:
    state, stage, payload = data.draw(st.sampled_from(SPARSE_STATES))
    out = bytearray(state)
    if data.draw(st.booleans()):
        del out[data.draw(st.integers(0, len(out) - 1)) :]
    else:
        out[data.draw(st.integers(0, len(out) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    blob = bytes(out)
    peers = public_keys(SPARSE_CONFIG.participants)
    try:
        client = ClientSession.from_bytes(blob, identity_key(1), peers)
    except SecAggError:
        return
    assert client.to_bytes() == blob
    x = random_inputs(SPARSE_CONFIG, 9)[1]
    steps = {
        Stage.ADVERTISE_KEYS: lambda: client.advertise_keys(),
        Stage.SHARE_KEYS: lambda: client.share_keys(payload),
        Stage.MASKED_INPUT: lambda: client.masked_input(payload, x),
        Stage.CONSISTENCY_CHECK: lambda: client.consistency_check(payload),
        Stage.UNMASK: lambda: client.unmask(payload),
    }
    with contextlib.suppress(SecAggError):
        steps[stage]()
