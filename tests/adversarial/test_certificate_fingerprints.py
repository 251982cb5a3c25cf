"""Sessions that name their participants by certificate fingerprint, against real site agents.

A session no longer carries every participant's certificate: it names each by the SHA-256 of
its certificate, which the site holds from one earlier fetch (`GetCertificates`). The attacker
answers that fetch too, so each test here has the coordinator lie in it, and shows the site
refuses; the control shows the roster check is what stops a substituted certificate.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from federation.identity import load_certificate
from federation.releases import Purpose
from federation.roster import certificate_fingerprint
from federation.wire.v1 import federation_pb2 as pb
from tests.adversarial.harness import (
    CheatingCoordinator,
    Consortium,
    adversarial_plan,
    audit_actions,
    learned,
    make_consortium,
)

pytestmark = [pytest.mark.integration, pytest.mark.adversarial]

A, B, C = "hospital-a", "hospital-b", "hospital-c"
FAKE = ("hospital-x", "hospital-y")
PARTICIPANTS = {1: A, 2: B, 3: C}


def _fingerprint(pem: str) -> str:
    return certificate_fingerprint(load_certificate(pem))


@pytest.fixture
def consortium(tmp_path: Path) -> Iterator[Consortium]:
    built = make_consortium(tmp_path / "fed", (A, B, C), {"lifetime_epsilon": 1000.0})
    for name in FAKE:
        built.fabricate(name)
    try:
        yield built
    finally:
        built.close()


def _serve(consortium: Consortium, site: str, pems: list[str]) -> None:
    """What the site's GetCertificates fetch files (the agent loop calls `add` with the answer)."""
    consortium.agents[site].peer_certificates.add(pems)


def _honest_names(consortium: Consortium, sites: list[str]) -> dict[str, str]:
    return {s: _fingerprint(consortium.certificate(s)) for s in sites}


def test_a_session_named_by_fingerprints_sums_exactly(consortium: Consortium) -> None:
    evil = CheatingCoordinator(consortium, adversarial_plan(), "run-fp")
    sites = [A, B, C]
    evil.offer(sites)
    evil.prepare(sites, Purpose.STATS, 0, 0)
    for site in sites:
        _serve(consortium, site, [consortium.certificate(s) for s in sites])
    session = evil.session(Purpose.STATS, 0, 0, PARTICIPANTS)
    session.named_by = _honest_names(consortium, sites)
    session.run_honestly()
    assert not session.refusals
    expected = sum(evil.release(s, Purpose.STATS, 0).astype(np.uint64) for s in sites)
    total = session.recover_sum()
    assert total is not None
    np.testing.assert_array_equal(total, (expected % 2**32).astype(np.uint32))


def test_a_certificate_answered_for_another_fingerprint_is_never_used(
    consortium: Consortium,
) -> None:
    """The fetch for B's fingerprint is answered with a certificate the attacker holds the key
    of: it is filed under its own fingerprint, so B's name still finds nothing."""
    evil = CheatingCoordinator(consortium, adversarial_plan(), "run-swap")
    evil.offer([A])
    evil.prepare([A], Purpose.STATS, 0, 0)
    _serve(consortium, A, [consortium.certificate(A), consortium.fabricated[FAKE[0]]])
    session = evil.session(Purpose.STATS, 0, 0, {1: A, 2: B, 3: FAKE[1]}, colluders=FAKE)
    session.named_by = {**_honest_names(consortium, [A, B]), FAKE[1]: "0" * 64}
    session.advertise(sites=[A])
    assert any("no certificate with fingerprint" in m for m in session.refusals[A])
    assert audit_actions(consortium.agents[A], "secagg_refused")
    assert consortium.agents[A].peer_certificates.get(session.named_by[B]) is None


def test_a_participant_named_by_a_certificate_off_the_roster_is_refused(
    consortium: Consortium,
) -> None:
    """The attacker names two participants by the fingerprints of CA-signed certificates it
    holds (and serves them): the roster check refuses them, as for certificates sent inline."""
    evil, session = _fabricated_by_fingerprint(consortium, "run-offroster")
    assert any("not on the consortium roster" in m for m in session.refusals[A])
    truth = evil.release(A, Purpose.STATS, 0)
    assert not learned([session.sum_minus_colluders()], truth)


def test_control_without_the_roster_check_a_fingerprint_named_stranger_learns_the_release(
    consortium: Consortium,
) -> None:
    consortium.agents[A].secagg.check_participant = None
    evil, session = _fabricated_by_fingerprint(consortium, "run-offroster-control")
    truth = evil.release(A, Purpose.STATS, 0)
    assert learned([session.sum_minus_colluders()], truth)


def test_a_certificate_sent_inline_must_be_the_one_its_fingerprint_names(
    consortium: Consortium,
) -> None:
    evil = CheatingCoordinator(consortium, adversarial_plan(), "run-inline")
    evil.offer([A])
    evil.prepare([A], Purpose.STATS, 0, 0)
    session = evil.session(Purpose.STATS, 0, 0, PARTICIPANTS)
    # ADVERTISE_KEYS built by hand: C's entry carries B's certificate under C's fingerprint
    task = session._secagg_task(A, pb.TASK_KIND_SECAGG_ADVERTISE_KEYS)
    task.secagg.session_config = session.config.to_bytes()
    for ident, site in sorted(PARTICIPANTS.items()):
        other = consortium.certificate(B if site == C else site)
        task.secagg.participants.add(
            site_id=site,
            participant_id=ident,
            certificate_pem=other if site == C else consortium.certificate(site),
            certificate_sha256=_fingerprint(consortium.certificate(site)),
        )
    result = consortium.agents[A].handle(task)
    assert result.HasField("error")
    assert "not the one its fingerprint names" in result.error.message


def _fabricated_by_fingerprint(
    consortium: Consortium, run_id: str
) -> tuple[CheatingCoordinator, object]:
    evil = CheatingCoordinator(consortium, adversarial_plan(), run_id)
    evil.offer([A])
    evil.prepare([A], Purpose.STATS, 0, 0)
    _serve(consortium, A, [consortium.certificate(A), *consortium.fabricated.values()])
    session = evil.session(Purpose.STATS, 0, 0, {1: A, 2: FAKE[0], 3: FAKE[1]}, colluders=FAKE)
    session.named_by = {
        A: _fingerprint(consortium.certificate(A)),
        **{name: _fingerprint(consortium.fabricated[name]) for name in FAKE},
    }
    session.run_honestly()
    return evil, session
