"""The certificates a site holds for sessions named by fingerprint, and the agent's one fetch."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from federation.identity import Identity
from federation.pki import CertificateAuthority
from federation.roster import Roster, RosterEntry, certificate_fingerprint
from federation.wire.v1 import federation_pb2
from site_agent.peer_certificates import PeerCertificates
from site_agent.session_peers import fetch_certificates, prepare_session

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def pems() -> dict[str, str]:
    ca = CertificateAuthority.create("c", validity_days=30, now=NOW)
    issued = {
        n: ca.issue(Identity("site", n), validity_days=9, now=NOW) for n in ("aa", "bb", "cc")
    }
    return {n[0]: i.certificate_pem.decode() for n, i in issued.items()}


def _fp(pem: str) -> str:
    from federation.identity import load_certificate

    return certificate_fingerprint(load_certificate(pem))


def test_a_certificate_is_filed_under_its_own_fingerprint_only(
    tmp_path: Path, pems: dict[str, str]
) -> None:
    store = PeerCertificates(tmp_path / "s.sqlite")
    filed = store.add([pems["a"], "not a certificate", pems["b"], pems["a"]])
    assert filed == [_fp(pems["a"]), _fp(pems["b"]), _fp(pems["a"])]
    assert store.get(_fp(pems["a"])) == pems["a"] and store.get(_fp(pems["c"])) is None
    assert store.missing([_fp(pems["c"]), _fp(pems["a"]), _fp(pems["c"]), ""]) == [_fp(pems["c"])]
    # it lasts: a restarted agent does not fetch again
    assert PeerCertificates(tmp_path / "s.sqlite").get(_fp(pems["b"])) == pems["b"]


class _Stub:
    """A coordinator's GetCertificates that answers with whatever it is given."""

    def __init__(self, answer: list[str]) -> None:
        self.answer = answer
        self.asked: list[list[str]] = []

    async def GetCertificates(
        self, request: federation_pb2.GetCertificatesRequest
    ) -> federation_pb2.GetCertificatesResponse:
        self.asked.append(list(request.sha256))
        return federation_pb2.GetCertificatesResponse(
            certificates=[
                federation_pb2.ParticipantCertificate(certificate_pem=p) for p in self.answer
            ]
        )


def _task(names: dict[str, str]) -> federation_pb2.Task:
    task = federation_pb2.Task(kind=federation_pb2.TASK_KIND_SECAGG_ADVERTISE_KEYS)
    for i, (site, sha256) in enumerate(sorted(names.items()), start=1):
        task.secagg.participants.add(site_id=site, participant_id=i, certificate_sha256=sha256)
    return task


def test_the_agent_fetches_only_what_it_lacks_and_only_once(
    tmp_path: Path, pems: dict[str, str]
) -> None:
    peers = PeerCertificates(tmp_path / "s.sqlite")
    peers.add([pems["a"]])
    names = {n: _fp(p) for n, p in pems.items()}
    stub = _Stub([pems["b"], pems["c"]])
    asyncio.run(fetch_certificates(stub, _task(names), peers))  # type: ignore[arg-type]
    assert stub.asked == [[names["b"], names["c"]]]
    asyncio.run(fetch_certificates(stub, _task(names), peers))  # type: ignore[arg-type]
    assert len(stub.asked) == 1  # all held now: no second fetch


class _Roster:
    """A SiteRoster stand-in holding one signed roster version."""

    def __init__(self, roster: Roster) -> None:
        self.roster = roster
        self.version = roster.version


def test_a_session_naming_a_certificate_the_roster_lacks_says_hello_again(
    tmp_path: Path, pems: dict[str, str]
) -> None:
    from federation.identity import load_certificate

    entries = tuple(RosterEntry.from_certificate(load_certificate(pems[n])) for n in ("a", "b"))
    roster = _Roster(Roster("c", 1, NOW, entries))
    peers = PeerCertificates(tmp_path / "s.sqlite")
    hellos: list[int] = []

    async def hello() -> None:
        hellos.append(1)

    stub = _Stub([])
    known = _task({"aa": _fp(pems["a"]), "bb": _fp(pems["b"])})
    peers.add([pems["a"], pems["b"]])
    asyncio.run(prepare_session(stub, known, roster, peers, hello))  # type: ignore[arg-type]
    assert hellos == []  # everyone is on our roster: no extra Hello
    added = _task({"aa": _fp(pems["a"]), "cc": _fp(pems["c"])})
    asyncio.run(prepare_session(stub, added, roster, peers, hello))  # type: ignore[arg-type]
    assert hellos == [1]  # cc is not (yet) on it: ask for the newest roster first
    asyncio.run(prepare_session(stub, federation_pb2.Task(), roster, peers, hello))  # type: ignore[arg-type]
    assert hellos == [1] and stub.asked == [[_fp(pems["c"])]]
