"""Before a site joins a session: the roster and the participants' certificates it will check.

A session names its participants by certificate fingerprint. Before the (synchronous) handler
checks them, the agent's connection loop makes sure it holds what the checks need: the newest
roster the coordinator has (a consortium may have renewed a kit or added a site since this agent
last said Hello) and each participant's certificate (fetched once, `GetCertificates`). Neither
step decides anything: whatever arrives is CA-signed (the roster) or filed under its own
fingerprint (certificates) and then checked by `SecaggAdapter` exactly as if it had been held all
along, so a coordinator that lies here can only make a session be refused.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from federation.identity import IdentityError, load_certificate
from federation.roster import certificate_fingerprint
from federation.wire.v1 import federation_pb2, federation_pb2_grpc
from site_agent.peer_certificates import PeerCertificates
from site_agent.roster import SiteRoster

log = logging.getLogger("concordia.site")


async def prepare_session(
    stub: federation_pb2_grpc.FederationStub,
    task: federation_pb2.Task,
    roster: SiteRoster,
    peers: PeerCertificates,
    hello: Callable[[], Awaitable[None]],
) -> None:
    """For a session's first task: say Hello again if the roster lags, then fetch the missing
    certificates. Other tasks: nothing."""
    if not task.HasField("secagg") or not task.secagg.participants:
        return
    if roster_lags(task, roster):
        log.info("a session names a certificate roster v%d lacks: Hello again", roster.version)
        await hello()
    await fetch_certificates(stub, task, peers)


def roster_lags(task: federation_pb2.Task, roster: SiteRoster) -> bool:
    """Whether the session names a certificate the roster does not list as that site's
    active one (renewed or added since; or simply not admitted, which the checks refuse)."""
    current = roster.roster
    for entry in task.secagg.participants:
        sha256 = entry.certificate_sha256
        if not sha256 and entry.certificate_pem:
            try:
                sha256 = certificate_fingerprint(load_certificate(entry.certificate_pem))
            except (IdentityError, ValueError):
                continue  # refused, with its reason, by the session checks
        if sha256 and sha256 not in {e.fingerprint for e in current.active(entry.site_id, "site")}:
            return True
    return False


async def fetch_certificates(
    stub: federation_pb2_grpc.FederationStub, task: federation_pb2.Task, peers: PeerCertificates
) -> None:
    """Fetch, once, the participant certificates this site does not hold yet."""
    wanted = [p.certificate_sha256 for p in task.secagg.participants if not p.certificate_pem]
    missing = peers.missing(wanted)
    if not missing:
        return
    response = await stub.GetCertificates(federation_pb2.GetCertificatesRequest(sha256=missing))
    filed = peers.add(c.certificate_pem for c in response.certificates)
    log.info("fetched %d of %d participant certificates", len(filed), len(missing))
