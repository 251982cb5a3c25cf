"""The site's serve loop against a scripted coordinator stub: for any mix of accepted, refused
and approval-pending results, idle answers and coordinators with or without PushAndPull, every
task is handled once, every result delivered once and in order (never retried after a refusal),
one RPC per answered task where PushAndPull is there, and an older coordinator's UNIMPLEMENTED
switches the connection to PushResult + PullTask with the same result re-sent."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast
from unittest import mock

import grpc
import pytest
from grpc import aio
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.wire.v1 import federation_pb2 as pb
from federation.wire.v1 import federation_pb2_grpc as pb_grpc
from site_agent import serve_loop

pytestmark = pytest.mark.unit

WAIT_MS = 1234
ACCEPT, REFUSE_STATE, REFUSE_VALUE = "accept", "refuse-state", "refuse-value"
REFUSAL = {
    REFUSE_STATE: grpc.StatusCode.FAILED_PRECONDITION,
    REFUSE_VALUE: grpc.StatusCode.INVALID_ARGUMENT,
}


def _error(code: grpc.StatusCode) -> aio.AioRpcError:
    return aio.AioRpcError(code, aio.Metadata(), aio.Metadata(), details=f"scripted {code.name}")


@dataclass(frozen=True)
class Step:
    """One task the coordinator hands out and how it answers the site's result."""

    answer: str  # ACCEPT or a refusal
    approval_pending: bool  # the site's handler says a person has not decided yet
    idle_before: bool  # the coordinator first answers with an idle task


@dataclass
class ScriptedCoordinator:
    """A Federation stub whose tasks and answers follow `steps`; when they run out it answers
    UNAVAILABLE, which ends `serve` as a lost connection would."""

    steps: list[Step]
    push_and_pull: bool  # False: an older coordinator (UNIMPLEMENTED)
    calls: list[str] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)
    waits: list[int] = field(default_factory=list)
    _handed: int = 0
    _idle_sent: bool = False

    def _next(self) -> pb.Task:
        if self._handed == len(self.steps):
            raise _error(grpc.StatusCode.UNAVAILABLE)
        step = self.steps[self._handed]
        if step.idle_before and not self._idle_sent:
            self._idle_sent = True
            return pb.Task(kind=pb.TASK_KIND_IDLE)
        self._idle_sent = False
        self._handed += 1
        kind = pb.TASK_KIND_PLAN_OFFER if step.approval_pending else pb.TASK_KIND_TRAIN
        return pb.Task(task_id=f"t{self._handed}", run_id="run-1", kind=kind)

    def _take(self, result: pb.TaskResult) -> None:
        self.delivered.append(result.task_id)
        answer = self.steps[int(result.task_id[1:]) - 1].answer
        if answer != ACCEPT:
            raise _error(REFUSAL[answer])

    async def PullTask(self, request: pb.PullTaskRequest) -> pb.Task:
        self.calls.append("PullTask")
        self.waits.append(request.wait_ms)
        return self._next()

    async def PushResult(self, request: pb.TaskResult) -> pb.PushAck:
        self.calls.append("PushResult")
        self._take(request)
        return pb.PushAck(task_id=request.task_id)

    async def PushAndPull(self, request: pb.PushAndPullRequest) -> pb.Task:
        self.calls.append("PushAndPull")
        if not self.push_and_pull:
            raise _error(grpc.StatusCode.UNIMPLEMENTED)
        self.waits.append(request.wait_ms)
        self._take(request.result)
        return self._next()


class FakeSite:
    """What the loop uses of a SiteAgent; tasks carry no session, so no roster is consulted."""

    def __init__(self) -> None:
        self.site_id = "hospital-a"
        self.poll_wait_ms = WAIT_MS
        self.last_task: str | None = None
        self.roster: Any = None
        self.peer_certificates: Any = None
        self.handled: list[str] = []

    def handle(self, task: pb.Task) -> pb.TaskResult:
        self.handled.append(task.task_id)
        result = pb.TaskResult(task_id=task.task_id, kind=task.kind)
        if task.kind == pb.TASK_KIND_PLAN_OFFER:
            result.error.code = pb.TASK_ERROR_APPROVAL_PENDING
        return result


async def _no_hello() -> None:
    raise AssertionError("no task here names a session")


def _serve(coordinator: ScriptedCoordinator, site: FakeSite) -> grpc.StatusCode:
    stub = cast(pb_grpc.FederationStub, coordinator)
    served = serve_loop.serve(cast(serve_loop.ServedSite, site), stub, _no_hello)
    with (
        mock.patch.object(serve_loop, "APPROVAL_POLL_S", 0.0),
        pytest.raises(aio.AioRpcError) as ended,
    ):
        asyncio.run(served)
    code: grpc.StatusCode = ended.value.code()
    return code


steps = st.lists(
    st.builds(
        Step,
        answer=st.sampled_from([ACCEPT, ACCEPT, REFUSE_STATE, REFUSE_VALUE]),
        approval_pending=st.booleans(),
        idle_before=st.booleans(),
    ),
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(script=steps, push_and_pull=st.booleans())
def test_every_result_is_delivered_once_in_order_with_one_rpc_per_task(
    script: list[Step], push_and_pull: bool
) -> None:
    coordinator = ScriptedCoordinator(script, push_and_pull)
    site = FakeSite()
    assert _serve(coordinator, site) == grpc.StatusCode.UNAVAILABLE  # only the end reconnects
    handed = [f"t{i + 1}" for i in range(len(script))]
    assert site.handled == handed  # each task handled once, none skipped
    assert coordinator.delivered == handed  # each result delivered once: refusals not retried
    assert set(coordinator.waits) <= {WAIT_MS}
    approvals = {f"t{i + 1}" for i, s in enumerate(script) if s.approval_pending}
    if push_and_pull:
        # One RPC per task: a plain pull only to start, after an idle answer, after a refused
        # result and after an approval-pending offer (PushResult, then wait, then pull).
        no_next = {f"t{i + 1}" for i, s in enumerate(script) if s.answer != ACCEPT} | approvals
        idles = sum(s.idle_before for s in script)
        assert coordinator.calls.count("PullTask") == 1 + idles + len(no_next)
        assert coordinator.calls.count("PushResult") == len(approvals)
        assert coordinator.calls.count("PushAndPull") == len(script) - len(approvals)
    else:
        # UNIMPLEMENTED once, then PushResult + PullTask for every task of the connection
        tried = 1 if len(approvals) < len(script) else 0
        assert coordinator.calls.count("PushAndPull") == tried
        assert coordinator.calls.count("PushResult") == len(script)


def test_an_older_coordinator_gets_the_same_result_again_by_push_result() -> None:
    script = [Step(ACCEPT, False, False), Step(ACCEPT, False, False)]
    coordinator = ScriptedCoordinator(script, push_and_pull=False)
    assert _serve(coordinator, FakeSite()) == grpc.StatusCode.UNAVAILABLE
    assert coordinator.calls == [
        "PullTask",
        "PushAndPull",  # UNIMPLEMENTED: t1 was not taken
        "PushResult",  # t1 again
        "PullTask",
        "PushResult",  # t2: no second try of PushAndPull on this connection
        "PullTask",
    ]
    assert coordinator.delivered == ["t1", "t2"]
    # a new connection (a new `serve`) asks a possibly upgraded coordinator again
    again = ScriptedCoordinator(script, push_and_pull=True)
    assert _serve(again, FakeSite()) == grpc.StatusCode.UNAVAILABLE
    assert again.calls == ["PullTask", "PushAndPull", "PushAndPull"]


def test_any_other_rpc_error_of_push_and_pull_reconnects() -> None:
    class Failing(ScriptedCoordinator):
        async def PushAndPull(self, request: pb.PushAndPullRequest) -> pb.Task:
            self.calls.append("PushAndPull")
            raise _error(grpc.StatusCode.DEADLINE_EXCEEDED)

    coordinator = Failing([Step(ACCEPT, False, False)], push_and_pull=True)
    assert _serve(coordinator, FakeSite()) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert coordinator.calls == ["PullTask", "PushAndPull"]  # no PushResult, no pull: reconnect


def test_a_stage_too_long_for_the_event_loop_moves_to_a_worker_thread() -> None:
    """Secure-aggregation stages run on the event loop while they are short; a kind that once
    took longer than INLINE_MAX_S runs in a worker thread for the rest of the connection, so a
    large model's masked input blocks the loop at most once."""
    import threading
    import time

    kind = pb.TASK_KIND_SECAGG_CONSISTENCY_CHECK

    class Stages(ScriptedCoordinator):
        def _next(self) -> pb.Task:
            if self._handed == len(self.steps):
                raise _error(grpc.StatusCode.UNAVAILABLE)
            self._handed += 1
            return pb.Task(task_id=f"t{self._handed}", run_id="run-1", kind=kind)

    class SlowOnce(FakeSite):
        def __init__(self) -> None:
            super().__init__()
            self.threads: list[int] = []

        def handle(self, task: pb.Task) -> pb.TaskResult:
            self.threads.append(threading.get_ident())
            if task.task_id == "t2":
                time.sleep(serve_loop.INLINE_MAX_S * 2)  # this stage is slow once
            return super().handle(task)

    script = [Step(ACCEPT, approval_pending=False, idle_before=False) for _ in range(4)]
    site = SlowOnce()
    assert _serve(Stages(script, push_and_pull=True), site) == grpc.StatusCode.UNAVAILABLE
    loop_thread = threading.get_ident()  # asyncio.run runs the loop on this thread
    assert site.handled == ["t1", "t2", "t3", "t4"]
    assert site.threads[:2] == [loop_thread, loop_thread]  # short, then the slow one: inline
    assert all(t != loop_thread for t in site.threads[2:])  # after it: a worker thread
