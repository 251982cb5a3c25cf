"""The coordinator's front door, tested against a real coordinator process over mutual TLS:
who may call what, replays, bad plans and oversized messages — each refused and audited."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fedctl.localfed import LocalFederation
from federation.consortium import parse_consortium
from federation.provisioning import provision
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
