"""Participants the consortium never admitted, or has revoked, against real site agents.

Own consortium (it revokes a site). A coordinator that could fabricate participants would need no
colluding hospital at all: two CA-signed identities of its own beside one honest site make a
session of three, and the sum minus its own two inputs is the honest site's release.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from federation.releases import Purpose
from federation.roster import ROSTER_FILE
from federation.roster_changes import revoke
from site_agent.roster import SiteRoster
from tests.adversarial.harness import (
    CheatingCoordinator,
    Consortium,
    adversarial_plan,
    audit_actions,
    learned,
    make_consortium,
)

pytestmark = [pytest.mark.integration, pytest.mark.adversarial]

A, B, C, D = "hospital-a", "hospital-b", "hospital-c", "hospital-d"
FAKE = ("hospital-x", "hospital-y")


@pytest.fixture
def consortium(tmp_path: Path) -> Iterator[Consortium]:
    built = make_consortium(tmp_path / "fed", (A, B, C, D), {"lifetime_epsilon": 1000.0})
    built.fabricate(FAKE[0])
    built.fabricate(FAKE[1])
    try:
        yield built
    finally:
        built.close()


def _fabricated_session(consortium: Consortium, run_id: str) -> tuple[CheatingCoordinator, object]:
    evil = CheatingCoordinator(consortium, adversarial_plan(), run_id)
    evil.offer([A])
    evil.prepare([A], Purpose.STATS, 0, 0)
    participants = {1: A, 2: FAKE[0], 3: FAKE[1]}
    session = evil.session(Purpose.STATS, 0, 0, participants, colluders=FAKE)
    session.run_honestly()
    return evil, session


def test_a_participant_not_on_the_roster_is_refused(consortium: Consortium) -> None:
    evil, session = _fabricated_session(consortium, "run-fake")
    assert A in session.refusals  # type: ignore[attr-defined]
    assert any("not on the consortium roster" in m for m in session.refusals[A])  # type: ignore[attr-defined]
    refused = audit_actions(consortium.agents[A], "secagg_refused")
    assert any("not on the consortium roster" in str(e["reason"]) for e in refused)
    truth = evil.release(A, Purpose.STATS, 0)
    assert not learned([session.sum_minus_colluders()], truth)  # type: ignore[attr-defined]


def test_control_fabricated_participants_reveal_the_release_without_the_roster(
    consortium: Consortium,
) -> None:
    consortium.agents[A].secagg.check_participant = None  # the CA check alone, as before
    evil, session = _fabricated_session(consortium, "run-fake-control")
    truth = evil.release(A, Purpose.STATS, 0)
    assert learned([session.sum_minus_colluders()], truth)  # type: ignore[attr-defined]


def test_a_revoked_site_is_excluded_by_the_other_sites(consortium: Consortium) -> None:
    revoke(consortium.fed.kits, D, "left the consortium")
    signed = (consortium.fed.kits / "ca" / ROSTER_FILE).read_bytes()
    for site in (A, B, C):
        agent = consortium.agents[site]
        before = agent.roster.version
        agent._take_roster(signed)  # what Hello hands over
        assert agent.roster.version == before + 1
        assert audit_actions(agent, "roster_updated")
    evil = CheatingCoordinator(consortium, adversarial_plan(), "run-revoked")
    evil.offer([A, B, C])
    evil.prepare([A, B, C], Purpose.STATS, 0, 0)
    session = evil.session(Purpose.STATS, 0, 0, {1: A, 2: B, 3: C, 4: D})
    session.run_honestly()
    for site in (A, B, C):
        assert any("revoked" in m for m in session.refusals[site]), session.refusals
    assert not session.masked


def test_an_older_or_forged_roster_is_not_taken(consortium: Consortium, tmp_path: Path) -> None:
    agent = consortium.agents[A]
    current = agent.roster.version
    kit_roster = (consortium.fed.site_kit(A) / ROSTER_FILE).read_bytes()
    agent._take_roster(kit_roster)  # not newer: ignored
    assert agent.roster.version == current
    forged = kit_roster.replace(b'"version": 1', b'"version": 9')
    assert forged != kit_roster
    agent._take_roster(forged)
    assert agent.roster.version == current
    assert audit_actions(agent, "roster_refused")
    # and a restarted agent still has the version it had
    again = SiteRoster(
        Path(agent.config.state_dir),
        consortium.fed.site_kit(A) / ROSTER_FILE,
        agent.kit.ca_certificate,
    )
    assert again.version == current
