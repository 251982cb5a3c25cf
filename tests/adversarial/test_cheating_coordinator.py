"""A cheating coordinator against real site agents: every attack is refused and learns nothing.

Each test (a) plays the attack, (b) checks the honest site refused and audited it, and (c) tries to
compute one honest site's release from everything it saw, comparing with the site's true cached
release. The `control` tests switch the defence off (monkeypatching the one site rule) and show
the same harness *does* recover the release: the attacks are real, so the refusals matter.
"""

from __future__ import annotations

import numpy as np
import pytest

from federation.releases import Purpose
from federation.sessions import session_config, session_context, vector_length
from federation.wire.v1 import federation_pb2 as pb
from secagg import primitives as P
from secagg.config import SessionConfig
from secagg.messages import KeyBroadcast, SignedKeys
from site_agent import secagg_adapter
from site_agent.cache import ReleaseCache
from tests.adversarial.harness import (
    CheatingCoordinator,
    Consortium,
    Session,
    adversarial_plan,
    audit_actions,
    learned,
)

pytestmark = [pytest.mark.integration, pytest.mark.adversarial]

A, B, C, D = "hospital-a", "hospital-b", "hospital-c", "hospital-d"
FOUR = {1: A, 2: B, 3: C, 4: D}
THREE = {1: A, 2: B, 3: C}


def _coordinator(
    consortium: Consortium, run_id: str, sites: tuple[str, ...]
) -> CheatingCoordinator:
    evil = CheatingCoordinator(consortium, adversarial_plan(), run_id)
    evil.offer(sites)
    return evil


def _refused(consortium: Consortium, site: str, session: Session, needle: str) -> None:
    """The site answered with an error and wrote a secagg_refused entry naming the cause."""
    assert site in session.refusals, f"{site} did not refuse"
    assert any(needle in m for m in session.refusals[site]), session.refusals[site]
    key = f"{session.coordinator.run_id}/{session.purpose.value}/{session.round}/{session.attempt}"
    entries = [
        e for e in audit_actions(consortium.agents[site], "secagg_refused") if e["session"] == key
    ]
    assert any(needle in str(e["reason"]) for e in entries), entries


def _low_threshold_config(evil: CheatingCoordinator, participants: dict[int, str]) -> SessionConfig:
    """What the probe sent: the plan's context and length, but t = 2 for n = 4."""
    plan = evil.plan
    return SessionConfig(
        context=session_context(plan, evil.run_id, Purpose.STATS, 0, 0, participants),
        round=0,
        threshold=2,
        participants=tuple(sorted(participants)),
        vector_length=vector_length(plan, Purpose.STATS),
    )


def _split_attack(session: Session) -> None:
    """Show {1, 2} and {3, 4} different survivor sets; collect 4's seed shares from one group
    and its masking-key shares from the other."""
    session.advertise()
    session.share_keys()
    session.masked_input()
    session.consistency({1: (1, 2), 2: (1, 2), 3: (3, 4), 4: (3, 4)})
    session.unmask({1: ((1, 2), (3, 4)), 2: ((1, 2), (3, 4)), 3: ((3, 4), (1, 2))})
    session.unmask({4: ((3, 4), (1, 2))})


# ---------------------------------------------------------------------- attack 1: split survivors
def test_split_survivor_sets_with_a_low_threshold_is_refused(
    consortium: Consortium, run_id: str
) -> None:
    evil = _coordinator(consortium, run_id, tuple(FOUR.values()))
    evil.prepare(FOUR.values(), Purpose.STATS, 0, 0)
    session = evil.session(Purpose.STATS, 0, 0, FOUR, config=_low_threshold_config(evil, FOUR))
    _split_attack(session)
    for site in FOUR.values():
        _refused(consortium, site, session, "threshold 2 (this site derives 3)")
    truth = evil.release(D, Purpose.STATS, 0)
    assert not learned([session.recover_individual(D)], truth)


def test_split_survivor_sets_under_the_plans_threshold_learns_nothing(
    consortium: Consortium, run_id: str
) -> None:
    evil = _coordinator(consortium, run_id, tuple(FOUR.values()))
    evil.prepare(FOUR.values(), Purpose.STATS, 0, 0)
    session = evil.session(Purpose.STATS, 0, 0, FOUR)  # honest config: t = 3
    assert session.config.threshold == 3
    session.advertise()
    session.share_keys()
    session.masked_input()
    # The best split t = 3 allows: {1, 2, 3} see 4 dropped; 4 sees {2, 3, 4} survive.
    session.consistency({1: (1, 2, 3), 2: (1, 2, 3), 3: (1, 2, 3), 4: (2, 3, 4)})
    session.unmask({u: ((1, 2, 3), (4,)) for u in (1, 2, 3)})
    session.unmask({4: ((2, 3, 4), (1,))})
    _refused(consortium, D, session, "valid consistency signatures")
    truth = evil.release(D, Purpose.STATS, 0)
    assert not learned([session.recover_individual(D)], truth)


def test_control_split_attack_recovers_a_release_when_the_site_takes_the_config_as_sent(
    consortium: Consortium, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    evil = _coordinator(consortium, run_id, tuple(FOUR.values()))
    evil.prepare(FOUR.values(), Purpose.STATS, 0, 0)
    offered = _low_threshold_config(evil, FOUR)
    monkeypatch.setattr(secagg_adapter, "derive_config", lambda *args: offered)
    session = evil.session(Purpose.STATS, 0, 0, FOUR, config=offered)
    _split_attack(session)
    assert learned([session.recover_individual(D)], evil.release(D, Purpose.STATS, 0))


# ---------------------------------------------------------------------- attack 2: a session of two
def test_two_participant_session_is_refused(consortium: Consortium, run_id: str) -> None:
    evil = _coordinator(consortium, run_id, (A,))
    evil.prepare([A], Purpose.STATS, 0, 0)
    pair = {1: A, 2: B}  # B colludes: the attacker holds its key and knows its input
    offered = SessionConfig(
        context=session_context(evil.plan, run_id, Purpose.STATS, 0, 0, pair),
        round=0,
        threshold=2,
        participants=(1, 2),
        vector_length=vector_length(evil.plan, Purpose.STATS),
    )
    session = evil.session(Purpose.STATS, 0, 0, pair, config=offered, colluders=[B])
    session.run_honestly()
    _refused(consortium, A, session, "below this site's floor of 3")
    truth = evil.release(A, Purpose.STATS, 0)
    assert not learned([session.sum_minus_colluders()], truth)


def test_control_two_participant_session_reveals_the_honest_release(
    consortium: Consortium, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    evil = _coordinator(consortium, run_id, (A,))
    evil.prepare([A], Purpose.STATS, 0, 0)
    pair = {1: A, 2: B}
    offered = SessionConfig(
        session_context(evil.plan, run_id, Purpose.STATS, 0, 0, pair),
        0,
        2,
        (1, 2),
        vector_length(evil.plan, Purpose.STATS),
    )
    monkeypatch.setattr(secagg_adapter, "derive_config", lambda *args: offered)
    session = evil.session(Purpose.STATS, 0, 0, pair, config=offered, colluders=[B])
    session.run_honestly()
    assert learned([session.sum_minus_colluders()], evil.release(A, Purpose.STATS, 0))


# ------------------------------------------------------------ attack 3: one release, two sums
def _difference_attack(evil: CheatingCoordinator, purpose: Purpose, round_: int) -> list[object]:
    """Session 1 sums a, b, c; session 2 (a new attempt, no new local step) sums a, b: the
    difference would be c's release."""
    first = evil.session(purpose, round_, 0, THREE)
    first.run_honestly()
    second = evil.session(purpose, round_, 1, THREE)
    second.advertise()
    second.share_keys()
    second.masked_input(to=[1, 2])  # c "drops" before masking: its pairwise masks are removed
    second.consistency({1: (1, 2), 2: (1, 2)})
    second.unmask({1: ((1, 2), (3,)), 2: ((1, 2), (3,))})
    s1, s2 = first.recover_sum(), second.recover_sum()
    difference = None if s1 is None or s2 is None else s1 - s2
    return [first, second, difference]


@pytest.mark.parametrize("purpose", [Purpose.STATS, Purpose.UPDATE])
def test_release_masked_again_in_a_new_attempt_is_refused(
    consortium: Consortium, run_id: str, purpose: Purpose
) -> None:
    evil = _coordinator(consortium, run_id, tuple(THREE.values()))
    round_ = 0 if purpose is Purpose.STATS else 1
    evil.prepare(THREE.values(), purpose, round_, 0)  # UPDATE: real DP-SGD with Opacus
    truth = evil.release(C, purpose, round_)
    _, second, difference = _difference_attack(evil, purpose, round_)
    assert isinstance(second, Session)
    for site in (A, B):
        _refused(consortium, site, second, "already masked in session")
    assert not learned([difference], truth)  # type: ignore[list-item]


def test_control_difference_attack_recovers_a_release_without_the_binding(
    consortium: Consortium, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    evil = _coordinator(consortium, run_id, tuple(THREE.values()))
    evil.prepare(THREE.values(), Purpose.STATS, 0, 0)
    truth = evil.release(C, Purpose.STATS, 0)
    original = ReleaseCache.bind

    def bind_anywhere(self, run_id, purpose, round, session):  # type: ignore[no-untyped-def]
        self._conn.execute("UPDATE release_cache SET session = NULL")
        return original(self, run_id, purpose, round, session)

    monkeypatch.setattr(ReleaseCache, "bind", bind_anywhere)
    _, _, difference = _difference_attack(evil, Purpose.STATS, 0)
    assert learned([difference], truth)  # type: ignore[list-item]


def test_re_advertised_session_is_refused(consortium: Consortium, run_id: str) -> None:
    evil = _coordinator(consortium, run_id, tuple(THREE.values()))
    evil.prepare(THREE.values(), Purpose.STATS, 0, 0)
    truth = evil.release(C, Purpose.STATS, 0)
    first = evil.session(Purpose.STATS, 0, 0, THREE)
    first.run_honestly()
    again = evil.session(Purpose.STATS, 0, 0, THREE)  # the same session id, fresh keys wanted
    again.advertise()
    for site in THREE.values():
        _refused(consortium, site, again, "was already advertised here")
    assert not again.adverts
    again.share_keys()
    again.masked_input()
    assert not again.masked
    s1 = first.recover_sum()
    assert s1 is not None and not learned([s1], truth)


def test_control_re_advertised_session_leaks_when_the_site_forgets_it(
    consortium: Consortium, run_id: str
) -> None:
    evil = _coordinator(consortium, run_id, tuple(THREE.values()))
    evil.prepare(THREE.values(), Purpose.STATS, 0, 0)
    truth = evil.release(C, Purpose.STATS, 0)
    first = evil.session(Purpose.STATS, 0, 0, THREE)
    first.run_honestly()
    for agent in consortium.agents.values():  # what "the stored session is overwritten" did
        agent.sessions._conn.execute("DELETE FROM secagg_sessions WHERE run_id = ?", (run_id,))
        agent.sessions._conn.execute(
            "DELETE FROM secagg_session_log WHERE session LIKE ?", (f"{run_id}/%",)
        )
    again = evil.session(Purpose.STATS, 0, 0, THREE)
    again.advertise()
    again.share_keys()
    again.masked_input(to=[1, 2])
    again.consistency({1: (1, 2), 2: (1, 2)})
    again.unmask({1: ((1, 2), (3,)), 2: ((1, 2), (3,))})
    s1, s2 = first.recover_sum(), again.recover_sum()
    assert s1 is not None and s2 is not None
    assert learned([s1 - s2], truth)


def test_two_open_sessions_over_one_release(consortium: Consortium, run_id: str) -> None:
    evil = _coordinator(consortium, run_id, tuple(THREE.values()))
    evil.prepare(THREE.values(), Purpose.STATS, 0, 0)
    truth = evil.release(C, Purpose.STATS, 0)
    one = evil.session(Purpose.STATS, 0, 0, THREE)
    two = evil.session(Purpose.STATS, 0, 1, THREE)
    for session in (one, two):
        session.advertise()
        session.share_keys()
    one.masked_input()
    two.masked_input()
    for site in THREE.values():
        _refused(consortium, site, two, "already masked in session")
    one.consistency({u: (1, 2, 3) for u in (1, 2, 3)})
    one.unmask({u: ((1, 2, 3), ()) for u in (1, 2, 3)})
    total = one.recover_sum()
    expected = sum(
        (evil.release(s, Purpose.STATS, 0).astype(np.uint64) for s in THREE.values()),
        np.zeros_like(truth, dtype=np.uint64),
    )
    assert total is not None and np.array_equal(total, (expected % 2**32).astype(np.uint32))
    assert not learned([two.recover_sum(), two.recover_individual(C)], truth)


# ---------------------------------------------------------------------- the rest of the probe
def test_both_kinds_of_shares_of_one_peer_are_refused(consortium: Consortium, run_id: str) -> None:
    evil = _coordinator(consortium, run_id, tuple(THREE.values()))
    evil.prepare(THREE.values(), Purpose.STATS, 0, 0)
    session = evil.session(Purpose.STATS, 0, 0, THREE)
    session.advertise()
    session.share_keys()
    session.masked_input()
    session.consistency({u: (1, 2, 3) for u in (1, 2, 3)})
    session.unmask({u: ((1, 2, 3), (3,)) for u in (1, 2)})
    for site in (A, B):
        _refused(consortium, site, session, "both as survivor and as dropped")
    assert not learned([session.recover_individual(C)], evil.release(C, Purpose.STATS, 0))


def test_key_substitution_is_refused(consortium: Consortium, run_id: str) -> None:
    evil = _coordinator(consortium, run_id, tuple(THREE.values()))
    evil.prepare(THREE.values(), Purpose.STATS, 0, 0)
    session = evil.session(Purpose.STATS, 0, 0, THREE)
    session.advertise()
    # Replace c's keys with the attacker's own (it keeps c's signature: it cannot make one).
    _, c_pk = P.new_x25519()
    _, s_pk = P.new_x25519()
    original = session.adverts[3]
    session.adverts[3] = SignedKeys(3, c_pk, s_pk, original.signature)
    session.share_keys(to=[1, 2])
    for site in (A, B):
        _refused(consortium, site, session, "not signed by its identity key")
    assert not session.shares


def test_replay_across_sessions_and_runs_is_refused(consortium: Consortium, run_id: str) -> None:
    evil = _coordinator(consortium, run_id, tuple(THREE.values()))
    evil.prepare(THREE.values(), Purpose.STATS, 0, 0)
    first = evil.session(Purpose.STATS, 0, 0, THREE)
    first.run_honestly()
    broadcast = KeyBroadcast(
        first.config.digest(), tuple(first.adverts[i] for i in sorted(first.adverts))
    ).encode()
    other_run = _coordinator(consortium, run_id + "-b", tuple(THREE.values()))
    other_run.prepare(THREE.values(), Purpose.STATS, 0, 0)
    for target_run, attempt in ((evil, 1), (other_run, 0)):
        replayed = target_run.session(Purpose.STATS, 0, attempt, THREE)
        replayed.advertise()
        for ident in (1, 2, 3):
            replayed._deliver(ident, pb.TASK_KIND_SECAGG_SHARE_KEYS, broadcast)
        for site in THREE.values():
            _refused(consortium, site, replayed, "another session configuration")


def test_different_participant_lists_to_different_sites_are_refused(
    consortium: Consortium, run_id: str
) -> None:
    evil = _coordinator(consortium, run_id, tuple(FOUR.values()))
    evil.prepare(FOUR.values(), Purpose.STATS, 0, 0)
    view_a = {1: A, 2: B, 3: C}
    view_b = {1: A, 2: B, 3: D}
    session = evil.session(Purpose.STATS, 0, 0, view_a)
    session.advertise(sites=[A, C])
    config_b = session_config(evil.plan, run_id, Purpose.STATS, 0, 0, view_b)
    session.advertise(sites=[B], config_bytes=config_b.to_bytes(), listed=view_b)
    session.share_keys()
    assert B in session.refusals or {A, C} <= set(session.refusals)
    for site, messages in session.refusals.items():
        assert all("another session configuration" in m or "not signed" in m for m in messages), (
            site,
            messages,
        )
    assert len(session.shares) < session.config.threshold
    assert not learned([session.recover_individual(C)], evil.release(C, Purpose.STATS, 0))


def test_a_site_listed_twice_is_refused(consortium: Consortium, run_id: str) -> None:
    evil = _coordinator(consortium, run_id, (A,))
    evil.prepare([A], Purpose.STATS, 0, 0)
    padded = {1: A, 2: B, 3: B}  # one colluder under two ids would make n = 3
    session = evil.session(Purpose.STATS, 0, 0, {1: A, 2: B, 3: C})
    session.advertise(sites=[A], listed=padded)
    _refused(consortium, A, session, "listed twice")
