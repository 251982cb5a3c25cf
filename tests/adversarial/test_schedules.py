"""Hypothesis: random adversarial schedules never give a cheating coordinator one site's release.

Each example draws several sessions over the same releases: any attempt number (the same one
twice is a re-advertisement of a session id), any participant list and ids, the plan's config or
one with any threshold; a survivor view per participant (everyone sees the real survivors, or
the participants are split into two groups that each see only themselves, or anything); who
masks; and an interleaving of all sessions' stages (two sessions open at once), sometimes with a
new local step that makes new releases. Then it tries everything the harness knows: each
participant's release from revealed shares, each session's sum, every difference of two sums.
None may equal a release an honest site prepared. With the site's rules switched off the same
search finds releases (`test_control_*` in test_cheating_coordinator.py plays those attacks).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation.releases import Purpose
from federation.sessions import session_context, vector_length
from secagg.config import SessionConfig
from secagg.errors import SecAggError
from tests.adversarial.conftest import SITES
from tests.adversarial.harness import CheatingCoordinator, Consortium, Session, adversarial_plan

pytestmark = [pytest.mark.integration, pytest.mark.adversarial]

_examples = itertools.count(1)


def _open(data: st.DataObject, evil: CheatingCoordinator) -> Session:
    attempt = data.draw(st.integers(0, 2), label="attempt")
    chosen = data.draw(st.lists(st.sampled_from(SITES), min_size=2, max_size=4), label="sites")
    ids = data.draw(
        st.lists(st.integers(1, 6), min_size=len(chosen), max_size=len(chosen), unique=True),
        label="ids",
    )
    participants = dict(zip(ids, chosen, strict=True))
    if data.draw(st.booleans(), label="the plan's config"):
        with contextlib.suppress(ValueError):  # no such session under the plan: offer one anyway
            return evil.session(Purpose.STATS, 0, attempt, participants)
    n = len(participants)
    config = SessionConfig(
        context=session_context(evil.plan, evil.run_id, Purpose.STATS, 0, attempt, participants),
        round=0,
        threshold=data.draw(st.integers(2, n), label="threshold"),
        participants=tuple(sorted(participants)),
        vector_length=vector_length(evil.plan, Purpose.STATS),
    )
    return evil.session(Purpose.STATS, 0, attempt, participants, config=config)


def _views(data: st.DataObject, session: Session) -> dict[int, tuple[list[int], list[int]]]:
    """Per participant: the survivor set it is shown and the peers it is told dropped."""
    ids = sorted(session.participants)
    u3 = sorted(session.masked)
    style = data.draw(st.sampled_from(("honest", "split", "any")), label="survivor views")
    if style == "honest":
        return {u: (u3, [v for v in ids if v not in u3]) for u in u3}
    if style == "split":
        group = set(data.draw(st.sets(st.sampled_from(u3)), label="group")) if u3 else set()
        other = set(u3) - group
        out = {u: (sorted(group), sorted(set(ids) - group)) for u in group}
        out.update({u: (sorted(other), sorted(set(ids) - other)) for u in other})
        return out
    views = {}
    for u in data.draw(st.sets(st.sampled_from(ids)), label="asked"):
        survivors = sorted(data.draw(st.sets(st.sampled_from(ids)), label="survivors"))
        dropped = sorted(data.draw(st.sets(st.sampled_from(ids)), label="dropped"))
        views[u] = (survivors, dropped)
    return views


def _script(data: st.DataObject, session: Session) -> Iterator[Callable[[], None]]:
    """The session's stages in order, each to the participants the attacker picks."""
    ids = sorted(session.participants)

    def some(label: str, usual: list[int]) -> list[int]:
        if data.draw(st.integers(0, 4), label=f"{label}: all") > 0:  # mostly: as usual
            return usual
        return sorted(data.draw(st.sets(st.sampled_from(usual or ids)), label=label))

    yield lambda: session.advertise(sites=[session.participants[i] for i in some("adv", ids)])
    yield lambda: session.share_keys(to=some("share", sorted(session.adverts)))
    yield lambda: session.masked_input(to=some("mask", sorted(session.shares)))
    views: dict[int, tuple[list[int], list[int]]] = {}

    def consistency() -> None:
        views.update(_views(data, session))
        session.consistency({u: s for u, (s, _) in views.items()})

    yield consistency
    yield lambda: session.unmask(views)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_adversarial_schedules_never_yield_a_release(
    consortium: Consortium, data: st.DataObject
) -> None:
    evil = CheatingCoordinator(consortium, adversarial_plan(), f"run-fuzz-{next(_examples)}")
    evil.offer(SITES)
    releases: list[np.ndarray] = []

    def prepare(attempt: int) -> None:
        evil.prepare(SITES, Purpose.STATS, 0, attempt)
        releases.extend(evil.release(site, Purpose.STATS, 0) for site in SITES)

    prepare(0)
    sessions = [_open(data, evil) for _ in range(data.draw(st.integers(1, 3), label="sessions"))]
    scripts = [_script(data, s) for s in sessions]
    while scripts:
        script = data.draw(st.sampled_from(scripts), label="next stage of")
        step = next(script, None)
        if step is None:
            scripts.remove(script)
            continue
        with contextlib.suppress(KeyError, ValueError, SecAggError):
            step()  # a message the attacker cannot even form from what it holds is skipped
        if data.draw(st.integers(0, 9), label="new local step") == 0:
            prepare(data.draw(st.integers(0, 2), label="local attempt"))

    candidates: list[np.ndarray] = []
    for session in sessions:
        for site in set(session.participants.values()):
            recovered = session.recover_individual(site)
            if recovered is not None:
                candidates.append(recovered)
        total = session.recover_sum()
        if total is not None and session.masked:
            candidates.append(total)
    sums = list(candidates)
    candidates += [a - b for a, b in itertools.permutations(sums, 2) if a.shape == b.shape]
    for truth in releases:
        assert not any(np.array_equal(c, truth) for c in candidates)
