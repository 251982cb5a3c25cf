"""What operators see through the Admin service, with the real servicers in-process and a fake
site calling the Federation service: a submission that would charge live runs' sites again is
refused (unless allowed) with the combined ε named, `fedctl sites` shows the lifetime ε of each
site's latest result, and a site that stopped calling goes offline after the stated timeout."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from coordinator.admin_service import ONLINE_WINDOW_S, AdminService
from coordinator.app import Coordinator
from coordinator.auth import current_identity
from coordinator.federation_service import MAX_POLL_WAIT_S, FederationService
from coordinator.store import CoordinatorStore
from fedctl.runs import format_age
from federation.identity import Identity
from federation.wire.v1 import admin_pb2, federation_pb2

pytestmark = pytest.mark.unit

T = TypeVar("T")
ADMIN = Identity("operator", "alice", "admin")
PLAN = """
name = "overlap"
quorum = 2
[[features]]
kind = "numeric"
name = "age"
min = 40
max = 110
[time_grid]
cuts = [1000.0, 2000.0]
[privacy]
epsilon = {epsilon}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class FakeContext:
    """The few ServicerContext methods the servicers use."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [b"PEM"]}


def _call(identity: Identity, coroutine: Coroutine[Any, Any, T]) -> T:
    """Run one handler as `identity` (what the authorisation interceptor would set)."""

    async def run() -> T:
        current_identity.set(identity)
        return await coroutine

    return asyncio.run(run())


def _setup(tmp_path: Path, sites: tuple[str, ...]) -> tuple[Coordinator, Clock]:
    clock = Clock()
    app = Coordinator(CoordinatorStore(tmp_path / "c.sqlite", clock=clock), clock=clock)
    federation = FederationService(app)
    for site in sites:
        hello = federation_pb2.HelloRequest(
            site_id=site,
            agent_version="1.0",
            policy=federation_pb2.PolicySummary(
                max_epsilon_per_run=5.0, lifetime_epsilon_budget=10.0
            ),
        )
        _call(Identity("site", site), federation.Hello(hello, FakeContext()))
    return app, clock


def _submit(
    app: Coordinator, epsilon: float, validate_only: bool = False, allow_concurrent: bool = False
) -> admin_pb2.SubmitRunResponse:
    request = admin_pb2.SubmitRunRequest(
        plan_text=PLAN.format(epsilon=epsilon),
        validate_only=validate_only,
        allow_concurrent=allow_concurrent,
    )
    return _call(ADMIN, AdminService(app).SubmitRun(request, FakeContext()))


def _sites(app: Coordinator) -> admin_pb2.ListSitesResponse:
    request = admin_pb2.ListSitesRequest()
    return _call(ADMIN, AdminService(app).ListSites(request, FakeContext()))


def test_a_second_overlapping_run_is_refused_with_the_combined_epsilon(tmp_path: Path) -> None:
    app, _ = _setup(tmp_path, ("site-a", "site-b"))
    first = _submit(app, 2.0)
    assert first.run_id and not first.errors

    # a dry run predicts the refusal, the submission is refused: nothing new is live
    for validate_only in (True, False):
        refused = _submit(app, 3.0, validate_only=validate_only)
        assert not refused.run_id
        fields = [e.field for e in refused.errors]
        assert fields == ["candidates", "candidates", "allow_concurrent"]
        for error, site in zip(refused.errors, ("site-a", "site-b"), strict=False):
            assert error.message == (
                f"site {site} is already in live run {first.run_id} (ε 2): with this plan (ε 3)"
                " it could spend up to ε 5 combined (an upper bound: the sum of the plans' ε)"
            )
        assert "--allow-concurrent" in refused.errors[-1].message
    assert list(app.engines) == [first.run_id]
    refusals = [
        e.detail for e in app.store.audit.entries(after=0, limit=100) if e.action == "run_refused"
    ]
    assert [r["validate_only"] for r in refusals] == [True, False]
    assert refusals[-1]["overlaps"][0] == {
        "site": "site-a",
        "live_runs": {first.run_id: 2.0},
        "combined_epsilon": 5.0,
    }

    # with the flag it starts, and its audit entry says which runs it shares sites with
    assert _submit(app, 3.0, validate_only=True, allow_concurrent=True).plan_sha256
    second = _submit(app, 3.0, allow_concurrent=True)
    assert second.run_id and not second.errors
    submitted = [
        e.detail for e in app.store.audit.entries(after=0, limit=100) if e.action == "run_submitted"
    ]
    assert "concurrent" not in submitted[0]
    assert [c["combined_epsilon"] for c in submitted[1]["concurrent"]] == [5.0, 5.0]

    # a third sees both live runs, summed
    third = _submit(app, 1.0)
    runs = sorted([(first.run_id, 2.0), (second.run_id, 3.0)])
    assert third.errors[0].message.startswith(
        f"site site-a is already in live runs {runs[0][0]} (ε {runs[0][1]:g}), "
        f"{runs[1][0]} (ε {runs[1][1]:g}): with this plan (ε 1) it could spend up to ε 6 combined"
    )


def test_a_finished_run_does_not_count(tmp_path: Path) -> None:
    app, _ = _setup(tmp_path, ("site-a", "site-b"))
    first = _submit(app, 2.0)
    app.stop(first.run_id, "done with it", "urn:op")
    assert _submit(app, 3.0).run_id


def test_a_pushed_result_updates_the_lifetime_epsilon_operators_see(tmp_path: Path) -> None:
    app, _ = _setup(tmp_path, ("site-a", "site-b"))
    assert [s.policy.lifetime_epsilon_spent for s in _sites(app).sites] == [0.0, 0.0]
    run_id = _submit(app, 2.0).run_id
    federation = FederationService(app)
    site = Identity("site", "site-a")
    pull = federation_pb2.PullTaskRequest(site_id="site-a", wait_ms=0)
    task = _call(site, federation.PullTask(pull, FakeContext()))
    assert task.kind == federation_pb2.TASK_KIND_PLAN_OFFER and task.run_id == run_id
    result = federation_pb2.TaskResult(
        task_id=task.task_id,
        kind=task.kind,
        privacy=federation_pb2.PrivacyReport(
            epsilon_spent_run=0.5, epsilon_spent_lifetime=4.5, delta=1e-5
        ),
    )
    _call(site, federation.PushResult(result, FakeContext()))

    by_site = {s.site_id: s for s in _sites(app).sites}
    assert by_site["site-a"].policy.lifetime_epsilon_spent == 4.5
    assert by_site["site-a"].policy.lifetime_epsilon_budget == 10.0  # the rest of the policy stays
    assert by_site["site-a"].run_id == run_id and by_site["site-a"].run_epsilon_spent == 0.5
    assert by_site["site-b"].policy.lifetime_epsilon_spent == 0.0
    # the figure is stored, not only held by the live engine
    stored = {row.site_id: row.policy for row in app.store.sites()}
    assert stored["site-a"]["lifetime_epsilon_spent"] == 4.5
    assert json.dumps(stored["site-b"])  # untouched row still well-formed

    # a replay (refused) changes nothing
    replay = federation_pb2.TaskResult(
        task_id="bogus",
        kind=task.kind,
        privacy=federation_pb2.PrivacyReport(epsilon_spent_run=9.0, epsilon_spent_lifetime=9.0),
    )
    with pytest.raises(Aborted):
        _call(site, federation.PushResult(replay, FakeContext()))
    assert {s.site_id: s for s in _sites(app).sites}["site-a"].policy.lifetime_epsilon_spent == 4.5


def test_a_site_that_stopped_calling_goes_offline_after_the_stated_timeout(
    tmp_path: Path,
) -> None:
    assert ONLINE_WINDOW_S == 2 * MAX_POLL_WAIT_S
    app, clock = _setup(tmp_path, ("site-a", "site-b"))
    federation = FederationService(app)
    listed = _sites(app)
    assert listed.online_timeout_s == ONLINE_WINDOW_S
    assert {s.state for s in listed.sites} == {admin_pb2.SITE_STATE_ONLINE}

    # site-a keeps long-polling, site-b went silent after its Hello
    for _ in range(3):
        clock.now += MAX_POLL_WAIT_S
        pull = federation_pb2.PullTaskRequest(site_id="site-a", wait_ms=0)
        _call(Identity("site", "site-a"), federation.PullTask(pull, FakeContext()))
        clock.now += 1.0
    by_site = {s.site_id: s for s in _sites(app).sites}
    assert by_site["site-a"].state == admin_pb2.SITE_STATE_ONLINE
    assert by_site["site-a"].last_seen_age_s == pytest.approx(1.0)
    assert by_site["site-b"].state == admin_pb2.SITE_STATE_OFFLINE
    assert by_site["site-b"].last_seen_age_s == pytest.approx(3 * MAX_POLL_WAIT_S + 3.0)

    # exactly at the boundary: online just before, offline from the timeout on
    app2, clock2 = _setup(tmp_path / "again", ("site-c",))
    clock2.now += ONLINE_WINDOW_S - 0.1
    assert _sites(app2).sites[0].state == admin_pb2.SITE_STATE_ONLINE
    clock2.now += 0.1
    assert _sites(app2).sites[0].state == admin_pb2.SITE_STATE_OFFLINE


def test_last_seen_ages_read_like_a_person_would_write_them() -> None:
    assert [format_age(s) for s in (0, 4.9, 65, 3600 + 7 * 60, 3 * 86400 + 4 * 3600)] == [
        "0s",
        "4s",
        "1m05s",
        "1h07m",
        "3d04h",
    ]
