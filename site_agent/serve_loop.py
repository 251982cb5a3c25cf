"""The site's serve loop on one connection: answer a task, and ask for the next in the same RPC.

Its own module because the loop is the wire protocol of a site, with three ways to deliver a
result, and `site_agent.agent` (state, reconnects, heartbeat, roster) would otherwise pass the
module size the project keeps to.

After handling a task the site calls `PushAndPull`: the coordinator takes the result exactly as
`PushResult` would and answers with the site's next task, as `PullTask` would. One RPC per site
and stage instead of two halves the coordinator's gRPC, TLS and interceptor work in a round.
The exceptions keep the old behaviour:

- a result the coordinator refuses (FAILED_PRECONDITION, INVALID_ARGUMENT) answers no
  outstanding task: logged, not retried, and the loop goes on with a plain `PullTask`;
- a plan offer waiting for a person's approval (`TASK_ERROR_APPROVAL_PENDING`) is answered with
  `PushResult`, then the site waits APPROVAL_POLL_S before pulling (the coordinator would hand
  the same offer straight back);
- a coordinator without `PushAndPull` (an older version) answers UNIMPLEMENTED: the same result
  is re-sent with `PushResult` (an identical result is idempotent) and this connection uses
  `PushResult` + `PullTask` from then on;
- any other RPC error propagates, and `SiteAgent._connect_forever` reconnects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import grpc
from grpc import aio

from federation.wire.v1 import federation_pb2, federation_pb2_grpc
from site_agent.handlers import kind_label
from site_agent.peer_certificates import PeerCertificates
from site_agent.roster import SiteRoster
from site_agent.session_peers import prepare_session

log = logging.getLogger("concordia.site")

APPROVAL_POLL_S = 5.0
REJECTED = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)
_INLINE_KINDS = frozenset(
    {
        federation_pb2.TASK_KIND_SECAGG_ADVERTISE_KEYS,
        federation_pb2.TASK_KIND_SECAGG_SHARE_KEYS,
        federation_pb2.TASK_KIND_SECAGG_MASKED_INPUT,
        federation_pb2.TASK_KIND_SECAGG_CONSISTENCY_CHECK,
        federation_pb2.TASK_KIND_SECAGG_UNMASK,
    }
)
"""Tasks handled on the event loop itself: secure-aggregation stages, a few milliseconds each
at a consortium's sizes (a hundred peers: tens of ms), where the hand-off to a worker thread and
back (a future, a wake-up of the loop, the GIL changing hands twice) was a measurable share of
a short round's CPU. Training, statistics and evaluation stay in a worker thread, where the
event loop keeps the heartbeat going while they run; so does a stage kind once it took longer
than INLINE_MAX_S (a masked input of a million-parameter model over a hundred peers expands
a hundred masks: seconds)."""
INLINE_MAX_S = 0.05
"""A stage kind that took longer than this on the event loop is handled in a worker thread for
the rest of the connection: the loop is blocked at most once per kind, for one stage."""


class ServedSite(Protocol):
    """What the loop uses of a `SiteAgent` (a protocol, so this module need not import it)."""

    site_id: str
    poll_wait_ms: int
    last_task: str | None
    roster: SiteRoster
    peer_certificates: PeerCertificates

    def handle(self, task: federation_pb2.Task) -> federation_pb2.TaskResult: ...


async def serve(
    site: ServedSite,
    stub: federation_pb2_grpc.FederationStub,
    hello: Callable[[], Awaitable[None]],
) -> None:
    """Answer tasks on this connection forever (see the module docstring); `hello` says Hello
    again when a session names a certificate the site's roster lacks. Raises the RPC error that
    should make the agent reconnect."""
    combined = True  # until the coordinator says it has no PushAndPull
    slow: set[int] = set()  # stage kinds too long to handle on the event loop (`_answer`)
    task: federation_pb2.Task | None = None
    while True:
        if task is None:
            task = await stub.PullTask(
                federation_pb2.PullTaskRequest(site_id=site.site_id, wait_ms=site.poll_wait_ms)
            )
        if task.kind == federation_pb2.TASK_KIND_IDLE or not task.task_id:
            if task.retry_after_ms:
                await asyncio.sleep(task.retry_after_ms / 1000)
            task = None
            continue
        result = await _answer(site, stub, task, hello, slow)
        approval_pending = (
            result.error.code == federation_pb2.TASK_ERROR_APPROVAL_PENDING
            and not task.plan_offer.dry_run  # a dry run's note: nothing to ask again
        )
        task = None
        if approval_pending or not combined:
            if await _push(stub, result) and approval_pending:
                # The offer stays open until a person decides; ask again in a while, not in a
                # tight loop (the coordinator hands the same offer back at once).
                await asyncio.sleep(APPROVAL_POLL_S)
            continue
        try:
            task = await stub.PushAndPull(
                federation_pb2.PushAndPullRequest(result=result, wait_ms=site.poll_wait_ms)
            )
        except aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                log.info(
                    "the coordinator has no PushAndPull (an older version): using PushResult"
                    " and PullTask on this connection"
                )
                combined = False
                await _push(stub, result)  # the same result again: idempotent
                continue
            if exc.code() in REJECTED:
                log.warning("coordinator rejected our result: %s", exc.details())
                continue
            raise


async def _answer(
    site: ServedSite,
    stub: federation_pb2_grpc.FederationStub,
    task: federation_pb2.Task,
    hello: Callable[[], Awaitable[None]],
    slow: set[int],
) -> federation_pb2.TaskResult:
    """Fetch what a session's first task needs, then handle the task, on the event loop if it
    is a short secure-aggregation stage (`_INLINE_KINDS`, unless its kind already took longer
    than INLINE_MAX_S on this connection: `slow`), else in a worker thread (training is
    CPU-bound; the event loop keeps the heartbeat going); log how it went."""
    started = time.monotonic()
    site.last_task = kind_label(task.kind)
    await prepare_session(stub, task, site.roster, site.peer_certificates, hello)
    if task.kind in _INLINE_KINDS and task.kind not in slow:
        began = time.monotonic()
        result = site.handle(task)  # a few ms of work: a thread handoff would cost a fifth more
        if time.monotonic() - began > INLINE_MAX_S:
            slow.add(task.kind)  # a large model or consortium: threads from now on
    else:
        result = await asyncio.to_thread(site.handle, task)
    log.info(
        "%s %s round %d: %s in %.3f s",
        task.run_id,
        site.last_task,
        task.round,
        "refused" if result.HasField("error") else "done",
        time.monotonic() - started,
    )
    return result


async def _push(
    stub: federation_pb2_grpc.FederationStub, result: federation_pb2.TaskResult
) -> bool:
    """PushResult; False (logged, not retried) if the coordinator refuses the result, since it
    answers no outstanding task. Any other RPC error propagates (reconnect)."""
    try:
        await stub.PushResult(result)
    except aio.AioRpcError as exc:
        if exc.code() in REJECTED:
            log.warning("coordinator rejected our result: %s", exc.details())
            return False
        raise
    return True
