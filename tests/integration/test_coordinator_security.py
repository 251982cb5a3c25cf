"""The coordinator's front door, tested against a real coordinator process over mutual TLS:
who may call what, the consortium roster, replays, bad plans and oversized messages — each refused
and audited."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from fedctl.localfed import LocalFederation
from federation.consortium import parse_consortium
from federation.identity import Identity
from federation.provisioning import load_ca, provision
from federation.roster import load_signed_roster
from federation.roster_changes import add_site, revoke
from federation.tls import TlsKit, TransportSettings, secure_channel
from federation.wire.v1 import admin_pb2, admin_pb2_grpc, federation_pb2, federation_pb2_grpc

pytestmark = pytest.mark.integration

PLAN = """
name = "security"
quorum = 2
[[features]]
kind = "numeric"
name = "age"
min = 40
max = 110
[time_grid]
cuts = [1000.0, 2000.0]
"""


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    federation = LocalFederation(
        tmp_path_factory.mktemp("sec") / "fed", ("hospital-a", "hospital-b"), viewer=True
    )
    federation.prepare()
    os.environ["CONCORDIA_SERVER_MAX_MESSAGE_MB"] = "1"
    try:
        federation.start_coordinator()
    finally:
        del os.environ["CONCORDIA_SERVER_MAX_MESSAGE_MB"]
    stub = federation.admin()
    _wait_serving(stub)
    try:
        yield federation
    finally:
        federation.stop_all()


def _wait_serving(stub: admin_pb2_grpc.AdminStub) -> None:
    import time

    deadline = time.monotonic() + 60
    while True:
        try:
            stub.ListRuns(admin_pb2.ListRunsRequest(), timeout=2)
            return
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _site_stub(fed: LocalFederation, site: str) -> federation_pb2_grpc.FederationStub:
    kit = TlsKit.from_kit_dir(fed.site_kit(site))
    channel = secure_channel(f"localhost:{fed.port}", kit, TransportSettings())
    return federation_pb2_grpc.FederationStub(channel)


def _audit_actions(fed: LocalFederation) -> list[tuple[str, str, dict[str, object]]]:
    entries = fed.admin().GetAudit(admin_pb2.GetAuditRequest(limit=1000)).entries
    return [(e.actor, e.action, json.loads(e.detail_json)) for e in entries]


def _foreign_kit(tmp_path: Path) -> TlsKit:
    other = parse_consortium(
        {
            "consortium": {"name": "elsewhere"},
            "coordinator": {"hosts": ["localhost"], "port": 1},
            "sites": ["hospital-a"],
            "operators": [{"name": "operator", "role": "admin"}],
        }
    )
    provision(other, tmp_path / "other")
    return TlsKit.from_kit_dir(tmp_path / "other" / "operators" / "operator")


def test_no_client_certificate_is_refused_at_the_handshake(fed: LocalFederation) -> None:
    ca = (fed.kits / "coordinator" / "ca.pem").read_bytes()
    channel = grpc.secure_channel(
        f"localhost:{fed.port}", grpc.ssl_channel_credentials(root_certificates=ca)
    )
    with pytest.raises(grpc.RpcError) as caught:
        admin_pb2_grpc.AdminStub(channel).ListRuns(admin_pb2.ListRunsRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_is_refused(fed: LocalFederation, tmp_path: Path) -> None:
    foreign = _foreign_kit(tmp_path)
    ours = TlsKit.from_kit_dir(fed.kits / "operators" / "operator")
    mixed = TlsKit(ca_pem=ours.ca_pem, cert_pem=foreign.cert_pem, key_pem=foreign.key_pem)
    channel = secure_channel(f"localhost:{fed.port}", mixed, TransportSettings())
    with pytest.raises(grpc.RpcError) as caught:
        admin_pb2_grpc.AdminStub(channel).ListRuns(admin_pb2.ListRunsRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_site_claiming_another_sites_id_is_denied_and_audited(fed: LocalFederation) -> None:
    stub = _site_stub(fed, "hospital-a")
    with pytest.raises(grpc.RpcError) as caught:
        stub.Hello(federation_pb2.HelloRequest(site_id="hospital-b"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert any(
        action == "denied" and "hospital-b" in str(detail)
        for _, action, detail in _audit_actions(fed)
    )


def test_viewer_cannot_start_a_run_and_is_audited(fed: LocalFederation) -> None:
    viewer = fed.admin("viewer")
    assert viewer.ListRuns(admin_pb2.ListRunsRequest()) is not None  # reading is fine
    with pytest.raises(grpc.RpcError) as caught:
        viewer.SubmitRun(admin_pb2.SubmitRunRequest(plan_text=PLAN))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    denied = [
        (actor, detail)
        for actor, action, detail in _audit_actions(fed)
        if action == "denied" and str(detail.get("method", "")).endswith("/SubmitRun")
    ]
    assert denied and "viewer" in denied[-1][0]


def test_a_site_cannot_use_the_admin_service(fed: LocalFederation) -> None:
    kit = TlsKit.from_kit_dir(fed.site_kit("hospital-a"))
    channel = secure_channel(f"localhost:{fed.port}", kit, TransportSettings())
    with pytest.raises(grpc.RpcError) as caught:
        admin_pb2_grpc.AdminStub(channel).ListRuns(admin_pb2.ListRunsRequest())
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_malformed_plan_is_refused_with_the_field_and_nothing_is_stored(
    fed: LocalFederation,
) -> None:
    stub = fed.admin()
    before = len(stub.ListRuns(admin_pb2.ListRunsRequest()).runs)
    response = stub.SubmitRun(
        admin_pb2.SubmitRunRequest(plan_text=PLAN.replace("max = 110", "max = 10"))
    )
    assert not response.run_id
    assert any("max" in e.message for e in response.errors)
    assert len(stub.ListRuns(admin_pb2.ListRunsRequest()).runs) == before


def test_oversized_message_is_refused_and_nothing_is_stored(fed: LocalFederation) -> None:
    stub = fed.admin()
    before = len(stub.ListRuns(admin_pb2.ListRunsRequest()).runs)
    huge = PLAN + "\n# " + "x" * (2 * 1024 * 1024) + "\n"
    with pytest.raises(grpc.RpcError) as caught:
        stub.SubmitRun(admin_pb2.SubmitRunRequest(plan_text=huge))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(stub.ListRuns(admin_pb2.ListRunsRequest()).runs) == before


def test_replayed_result_from_an_earlier_stage_is_refused_and_audited(
    fed: LocalFederation,
) -> None:
    sites = {name: _site_stub(fed, name) for name in ("hospital-a", "hospital-b")}
    for name, stub in sites.items():
        stub.Hello(federation_pb2.HelloRequest(site_id=name))
    run_id = fed.admin().SubmitRun(admin_pb2.SubmitRunRequest(plan_text=PLAN)).run_id
    assert run_id
    offers = {}
    for name, stub in sites.items():
        task = stub.PullTask(federation_pb2.PullTaskRequest(site_id=name, wait_ms=5000))
        assert task.kind == federation_pb2.TASK_KIND_PLAN_OFFER and task.run_id == run_id
        offers[name] = federation_pb2.TaskResult(task_id=task.task_id, kind=task.kind)
        ack = stub.PushResult(offers[name])
        assert not ack.duplicate
    # an identical re-push of the current answer is idempotent, not a replay
    assert sites["hospital-a"].PushResult(offers["hospital-a"]).duplicate
    stats = sites["hospital-a"].PullTask(
        federation_pb2.PullTaskRequest(site_id="hospital-a", wait_ms=5000)
    )
    assert stats.kind == federation_pb2.TASK_KIND_FEDERATED_STATS
    sites["hospital-a"].PushResult(
        federation_pb2.TaskResult(task_id=stats.task_id, kind=stats.kind)
    )
    with pytest.raises(grpc.RpcError) as caught:
        sites["hospital-a"].PushResult(offers["hospital-a"])  # the old plan answer, replayed
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert any(
        action == "result_rejected" and detail.get("task_id") == offers["hospital-a"].task_id
        for _, action, detail in _audit_actions(fed)
    )
    fed.admin().StopRun(admin_pb2.StopRunRequest(run_id=run_id, reason="test over"))


def _answer(task: federation_pb2.Task) -> federation_pb2.TaskResult:
    return federation_pb2.TaskResult(task_id=task.task_id, kind=task.kind)


def _push_and_pull(
    stub: federation_pb2_grpc.FederationStub, result: federation_pb2.TaskResult, wait_ms: int
) -> federation_pb2.Task:
    request = federation_pb2.PushAndPullRequest(result=result, wait_ms=wait_ms)
    task: federation_pb2.Task = stub.PushAndPull(request, timeout=10)
    return task


def _finish_earlier_runs(stub: federation_pb2_grpc.FederationStub, site: str) -> None:
    """Acknowledge the RUN_FINISHED tasks the runs stopped by earlier tests left for `site`."""
    while True:
        task = stub.PullTask(federation_pb2.PullTaskRequest(site_id=site, wait_ms=0))
        if task.kind == federation_pb2.TASK_KIND_IDLE:
            return
        assert task.kind == federation_pb2.TASK_KIND_RUN_FINISHED, task.kind
        stub.PushResult(_answer(task))


def _refused(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    code: grpc.StatusCode = caught.value.code()
    return code


def test_push_and_pull_takes_the_result_answers_the_next_task_and_refuses_as_push_result(
    fed: LocalFederation,
) -> None:
    plan = PLAN.replace("quorum = 2\n", 'quorum = 2\nsites = ["hospital-a", "hospital-b"]\n')
    a, b = (_site_stub(fed, name) for name in ("hospital-a", "hospital-b"))
    for stub, name in ((a, "hospital-a"), (b, "hospital-b")):
        stub.Hello(federation_pb2.HelloRequest(site_id=name))
        _finish_earlier_runs(stub, name)
    run_id = fed.admin().SubmitRun(admin_pb2.SubmitRunRequest(plan_text=plan)).run_id
    assert run_id
    offer_a = a.PullTask(federation_pb2.PullTaskRequest(site_id="hospital-a", wait_ms=5000))
    offer_b = b.PullTask(federation_pb2.PullTaskRequest(site_id="hospital-b", wait_ms=5000))
    assert {offer_a.kind, offer_b.kind} == {federation_pb2.TASK_KIND_PLAN_OFFER}
    # hospital-a cannot answer hospital-b's task: it is outstanding for b, not for a
    assert _refused(lambda: _push_and_pull(a, _answer(offer_b), 0)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    # a value out of range is INVALID_ARGUMENT, as with PushResult, and changes nothing
    bad = _answer(offer_a)
    bad.privacy.epsilon_spent_run = float("nan")
    assert _refused(lambda: _push_and_pull(a, bad, 0)) == grpc.StatusCode.INVALID_ARGUMENT
    # taken (re-sending it is a duplicate); nothing is due for a until b has answered too
    assert _push_and_pull(a, _answer(offer_a), 300).kind == federation_pb2.TASK_KIND_IDLE
    assert a.PushResult(_answer(offer_a)).duplicate
    # b's offer is still b's to answer: one call takes it and hands b its next task
    stats_b = _push_and_pull(b, _answer(offer_b), 5000)
    assert stats_b.kind == federation_pb2.TASK_KIND_FEDERATED_STATS and stats_b.run_id == run_id
    stats_a = a.PullTask(federation_pb2.PullTaskRequest(site_id="hospital-a", wait_ms=5000))
    assert stats_a.kind == federation_pb2.TASK_KIND_FEDERATED_STATS
    # the last answer re-sent is a duplicate: the call answers with the current task
    assert _push_and_pull(a, _answer(offer_a), 0).task_id == stats_a.task_id
    # once a has answered the statistics, the offer answer is a replay: refused and audited
    assert _push_and_pull(a, _answer(stats_a), 300).kind == federation_pb2.TASK_KIND_IDLE
    assert _refused(lambda: _push_and_pull(a, _answer(offer_a), 0)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    assert a.PushResult(_answer(stats_a)).duplicate  # the statistics answer was taken
    rejected = [
        (actor, detail.get("task_id"))
        for actor, action, detail in _audit_actions(fed)
        if action == "result_rejected"
    ]
    assert ("site:hospital-a", offer_b.task_id) in rejected
    assert rejected.count(("site:hospital-a", offer_a.task_id)) == 2  # out of range, replay
    status = fed.admin().GetRun(admin_pb2.GetRunRequest(run_id=run_id))
    assert {s.site_id: s.decision for s in status.sites} == {
        "hospital-a": admin_pb2.PLAN_DECISION_ACCEPTED,
        "hospital-b": admin_pb2.PLAN_DECISION_ACCEPTED,
    }
    fed.admin().StopRun(admin_pb2.StopRunRequest(run_id=run_id, reason="test over"))
    _finish_earlier_runs(a, "hospital-a")
    _finish_earlier_runs(b, "hospital-b")


def test_push_and_pull_is_for_sites_only(fed: LocalFederation) -> None:
    kit = TlsKit.from_kit_dir(fed.kits / "operators" / "operator")
    operator = federation_pb2_grpc.FederationStub(
        secure_channel(f"localhost:{fed.port}", kit, TransportSettings())
    )
    request = federation_pb2.PushAndPullRequest(result=federation_pb2.TaskResult(task_id="t"))
    with pytest.raises(grpc.RpcError) as caught:
        operator.PushAndPull(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "is not a site" in (caught.value.details() or "")
    assert any(
        action == "denied" and str(detail.get("method", "")).endswith("/PushAndPull")
        for _, action, detail in _audit_actions(fed)
    )
    ca = (fed.kits / "coordinator" / "ca.pem").read_bytes()
    anonymous = grpc.secure_channel(
        f"localhost:{fed.port}", grpc.ssl_channel_credentials(root_certificates=ca)
    )
    with pytest.raises(grpc.RpcError) as caught:
        federation_pb2_grpc.FederationStub(anonymous).PushAndPull(request, timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # no certificate: no handshake


def _hello(stub: federation_pb2_grpc.FederationStub, site: str) -> grpc.StatusCode:
    try:
        response = stub.Hello(federation_pb2.HelloRequest(site_id=site), timeout=10)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    assert response.roster  # every Hello hands out the signed roster
    return grpc.StatusCode.OK


def _eventually(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """The coordinator looks at its roster file at most once a second."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_a_ca_signed_certificate_not_on_the_roster_is_refused_at_hello(
    fed: LocalFederation,
) -> None:
    ca = load_ca(fed.kits / "ca")
    issued = ca.issue(Identity("site", "hospital-z"), validity_days=1)
    kit = TlsKit(ca.issued.certificate_pem, issued.certificate_pem, issued.key_pem)
    channel = secure_channel(f"localhost:{fed.port}", kit, TransportSettings())
    stub = federation_pb2_grpc.FederationStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Hello(federation_pb2.HelloRequest(site_id="hospital-z"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not on the consortium roster" in (caught.value.details() or "")
    assert any(
        actor == "urn:concordia:site:hospital-z"
        and action == "denied"
        and str(detail["method"]).endswith("/Hello")
        and "not on the consortium roster" in str(detail["reason"])
        for actor, action, detail in _audit_actions(fed)
    )
    sites = fed.admin().ListSites(admin_pb2.ListSitesRequest()).sites
    assert "hospital-z" not in {s.site_id for s in sites}
    channel.close()


def test_sites_added_and_revoked_while_the_coordinator_runs(fed: LocalFederation) -> None:
    """add-site and revoke rewrite the coordinator's roster.json; the running coordinator
    follows: new sites are admitted, a revoked one's parked long-poll ends at once, it is refused
    at its next call and is no longer a run candidate."""
    add_site(fed.kits, "hospital-c")
    add_site(fed.kits, "hospital-d")
    stubs = {name: _site_stub(fed, name) for name in ("hospital-c", "hospital-d")}
    for name, stub in stubs.items():
        _eventually(
            lambda s=stub, n=name: _hello(s, n) == grpc.StatusCode.OK, f"{name} never admitted"
        )
    ca_cert = TlsKit.from_kit_dir(fed.site_kit("hospital-c")).ca_certificate
    handed = stubs["hospital-c"].Hello(federation_pb2.HelloRequest(site_id="hospital-c")).roster
    assert load_signed_roster(handed, ca_cert).version == 3

    # hospital-c parks a long-poll of 20 s; the revocation ends it (IDLE, no task) long before,
    # so its next call meets the new roster: not a 20 s window for a revoked certificate.
    stub_c = stubs["hospital-c"]
    parked = stub_c.PullTask.future(
        federation_pb2.PullTaskRequest(site_id="hospital-c", wait_ms=20_000), timeout=12
    )
    time.sleep(0.5)
    assert not parked.done()
    revoke(fed.kits, "hospital-c", "test revocation")
    ended = parked.result()  # DEADLINE_EXCEEDED at 12 s if the park outlived the roster
    assert ended.kind == federation_pb2.TASK_KIND_IDLE and not ended.task_id, ended
    _eventually(
        lambda: _hello(stub_c, "hospital-c") == grpc.StatusCode.PERMISSION_DENIED,
        "revoked hospital-c still admitted",
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub_c.Hello(federation_pb2.HelloRequest(site_id="hospital-c"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "revoked on" in (caught.value.details() or "")
    assert "test revocation" in (caught.value.details() or "")
    handed = stubs["hospital-d"].Hello(federation_pb2.HelloRequest(site_id="hospital-d")).roster
    assert load_signed_roster(handed, ca_cert).version == 4

    # hospital-c said Hello before, but a revoked site is no longer a run candidate
    plan = PLAN.replace("quorum = 2\n", 'quorum = 2\nsites = ["hospital-c", "hospital-d"]\n')
    response = fed.admin().SubmitRun(admin_pb2.SubmitRunRequest(plan_text=plan))
    assert response.run_id, response.errors
    status = fed.admin().GetRun(admin_pb2.GetRunRequest(run_id=response.run_id))
    assert [s.site_id for s in status.sites] == ["hospital-d"]
    fed.admin().StopRun(admin_pb2.StopRunRequest(run_id=response.run_id, reason="test over"))


def test_a_viewer_cannot_export_a_run(fed: LocalFederation) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        fed.admin("viewer").ExportRun(admin_pb2.ExportRunRequest(run_id="run-none"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == "role viewer may not ExportRun"
    with pytest.raises(grpc.RpcError) as caught:  # an admin reaches the handler
        fed.admin().ExportRun(admin_pb2.ExportRunRequest(run_id="run-none"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
