"""Hardening of the coordinator, against a real coordinator process over loopback mutual TLS:
out-of-range floats in results are refused before the engine sees them, malformed requests cost
one rate-limited log line each (never a traceback), the kit listens only on the provisioned
hosts, and the store and its audit head file are private."""

from __future__ import annotations

import asyncio
import json
import math
import re
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from grpc import aio

from coordinator.config import ConfigError
from coordinator.server import bind_listen_addresses
from fedctl.cli import run as fedctl
from fedctl.localfed import LocalFederation, free_port
from federation.audit_head import read_head_file
from federation.tls import (
    TlsKit,
    TransportSettings,
    channel_credentials,
    secure_channel,
    server_credentials,
)
from federation.wire.v1 import admin_pb2, admin_pb2_grpc, federation_pb2, federation_pb2_grpc

pytestmark = pytest.mark.integration

PLAN = """
name = "hardening"
quorum = 2
[[features]]
kind = "numeric"
name = "age"
min = 40
max = 110
[time_grid]
cuts = [1000.0, 2000.0]
"""
SITES = ("hospital-a", "hospital-b")
RATE_LIMIT = 10  # coordinator.guard.DEFAULT_LIMIT lines per peer per 10 s
FEDERATION = "/concordia.federation.v1.Federation/"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    federation = LocalFederation(tmp_path_factory.mktemp("hard") / "fed", SITES)
    federation.prepare()
    federation.start_coordinator()
    stub = federation.admin()
    try:
        federation.wait_ready(stub)
        yield federation
    finally:
        federation.stop_all()


def _site_stub(fed: LocalFederation, site: str) -> federation_pb2_grpc.FederationStub:
    kit = TlsKit.from_kit_dir(fed.site_kit(site))
    channel = secure_channel(f"localhost:{fed.port}", kit, TransportSettings())
    return federation_pb2_grpc.FederationStub(channel)


def _audit(fed: LocalFederation) -> list[tuple[str, str, dict[str, object]]]:
    entries = fed.admin().GetAudit(admin_pb2.GetAuditRequest(limit=1000)).entries
    return [(e.actor, e.action, json.loads(e.detail_json)) for e in entries]


def _site_view(status: admin_pb2.RunStatus) -> list[tuple[str, int, float, str]]:
    return [(s.site_id, s.decision, s.epsilon_spent, s.reason) for s in status.sites]


def test_out_of_range_privacy_reports_are_refused_audited_and_change_nothing(
    fed: LocalFederation,
) -> None:
    sites = {name: _site_stub(fed, name) for name in SITES}
    for name, stub in sites.items():
        stub.Hello(federation_pb2.HelloRequest(site_id=name))
    admin = fed.admin()
    run_id = admin.SubmitRun(admin_pb2.SubmitRunRequest(plan_text=PLAN)).run_id
    assert run_id
    task = sites["hospital-a"].PullTask(
        federation_pb2.PullTaskRequest(site_id="hospital-a", wait_ms=5000)
    )
    assert task.kind == federation_pb2.TASK_KIND_PLAN_OFFER and task.run_id == run_id
    before = admin.GetRun(admin_pb2.GetRunRequest(run_id=run_id))
    bad_reports = [
        ({"epsilon_spent_run": math.nan}, "privacy.epsilon_spent_run"),
        ({"epsilon_spent_run": math.inf}, "privacy.epsilon_spent_run"),
        ({"epsilon_spent_run": 1.0, "epsilon_spent_lifetime": -1.0}, "epsilon_spent_lifetime"),
        ({"epsilon_spent_run": -1.0}, "privacy.epsilon_spent_run"),
        ({"epsilon_spent_run": 1.0, "delta": math.inf}, "privacy.delta"),
    ]
    for fields, named in bad_reports:
        result = federation_pb2.TaskResult(
            task_id=task.task_id, kind=task.kind, privacy=federation_pb2.PrivacyReport(**fields)
        )
        with pytest.raises(grpc.RpcError) as caught:
            sites["hospital-a"].PushResult(result, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        details = caught.value.details() or ""
        assert named in details and "\n" not in details
    after = admin.GetRun(admin_pb2.GetRunRequest(run_id=run_id))
    assert (after.state, after.stage, after.round, after.attempt) == (
        before.state,
        before.stage,
        before.round,
        before.attempt,
    )
    assert _site_view(after) == _site_view(before)
    assert all(s.epsilon_spent == 0.0 for s in after.sites)
    audit = _audit(fed)
    rejected = [
        detail
        for actor, action, detail in audit
        if action == "result_rejected" and detail.get("task_id") == task.task_id
    ]
    assert len(rejected) == len(bad_reports)
    assert all(d["run_id"] == run_id for d in rejected)
    assert "privacy.epsilon_spent_run must be a finite number, got nan" in str(rejected[0])
    assert "got inf" in str(rejected[1]) and "must be >= 0, got -1.0" in str(rejected[2])
    assert not any(
        action == "result" and detail.get("run_id") == run_id and actor == "site:hospital-a"
        for actor, action, detail in audit
    )
    # the task is still outstanding: a sane answer is taken, and its ε is what the operator sees
    good = federation_pb2.TaskResult(
        task_id=task.task_id,
        kind=task.kind,
        privacy=federation_pb2.PrivacyReport(
            epsilon_spent_run=0.25, epsilon_spent_lifetime=1.5, delta=1e-5
        ),
    )
    assert not sites["hospital-a"].PushResult(good, timeout=10).duplicate
    status = admin.GetRun(admin_pb2.GetRunRequest(run_id=run_id))
    site_a = next(s for s in status.sites if s.site_id == "hospital-a")
    assert site_a.decision == admin_pb2.PLAN_DECISION_ACCEPTED and site_a.epsilon_spent == 0.25
    assert admin.VerifyAudit(admin_pb2.VerifyAuditRequest()).ok
    admin.StopRun(admin_pb2.StopRunRequest(run_id=run_id, reason="test over"))


def _raw(channel: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        method, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )


# Bytes that are not a valid encoding of any message: a truncated length-delimited field, an
# invalid wire type, an unterminated varint.
GARBAGE = [b"\x0a\x05ab", b"\x0f", b"\xff" * 11, b"\x12\x80"]


def test_malformed_requests_cost_one_rate_limited_line_and_no_traceback(
    fed: LocalFederation,
) -> None:
    for payload in GARBAGE:
        for message in (
            federation_pb2.TaskResult,
            federation_pb2.HelloRequest,
            federation_pb2.PushAndPullRequest,
        ):
            with pytest.raises(DecodeError):
                message.FromString(payload)
    site_kit = TlsKit.from_kit_dir(fed.site_kit("hospital-b"))
    site = secure_channel(f"localhost:{fed.port}", site_kit, TransportSettings())
    operator_kit = TlsKit.from_kit_dir(fed.kits / "operators" / "operator")
    operator = secure_channel(f"localhost:{fed.port}", operator_kit, TransportSettings())
    calls = [
        _raw(site, FEDERATION + "PushResult"),
        _raw(site, FEDERATION + "Hello"),
        _raw(site, FEDERATION + "PullTask"),
        _raw(site, FEDERATION + "PushAndPull"),
        _raw(operator, "/concordia.federation.v1.Admin/GetRun"),
    ]
    log_before = fed.log_text("coordinator")
    started = time.monotonic()
    sent = 0
    for i in range(400):
        call = calls[i % len(calls)]
        with pytest.raises(grpc.RpcError) as caught:
            call(GARBAGE[i % len(GARBAGE)], timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert "does not parse" in (caught.value.details() or "")
        sent += 1
    # an exception escaping a handler (here SQLite refusing a 64-bit seq) is INTERNAL, one line
    admin = admin_pb2_grpc.AdminStub(operator)
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as caught:
            admin.GetAudit(admin_pb2.GetAuditRequest(after_seq=2**64 - 1), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert caught.value.details() == "internal error; see the coordinator log"
    elapsed = time.monotonic() - started
    # still serving: a valid Hello from the same site
    hello = federation_pb2_grpc.FederationStub(site).Hello(
        federation_pb2.HelloRequest(site_id="hospital-b"), timeout=10
    )
    assert hello.coordinator_id
    # every request is either one line or counted in a "suppressed K similar lines" summary,
    # which comes when its peer's 10 s window closes (even with no further request)
    deadline = time.monotonic() + 40
    while True:
        new = fed.log_text("coordinator")[len(log_before) :]
        lines = new.splitlines()
        malformed = [ln for ln in lines if "malformed request to " in ln]
        suppressed = [int(m) for m in re.findall(r"suppressed (\d+) similar lines", new)]
        if len(malformed) + sum(suppressed) >= sent:
            break
        assert time.monotonic() < deadline, f"{len(malformed)} lines, {suppressed} suppressed"
        time.sleep(0.5)
    assert len(malformed) + sum(suppressed) == sent
    assert "Traceback" not in new and "DecodeError\n" not in new
    windows = 1 + int(elapsed // 10)
    assert 2 <= len(malformed) <= RATE_LIMIT * windows * 2  # two peers: the site, the operator
    assert any("urn:concordia:site:hospital-b" in ln for ln in malformed)
    assert any("urn:concordia:operator:operator" in ln for ln in malformed)
    failed = [ln for ln in lines if "GetAudit from" in ln and "failed unexpectedly" in ln]
    assert 1 <= len(failed) <= 3 and "OverflowError" in failed[0]
    assert len(lines) <= len(malformed) + len(suppressed) + len(failed) + 5
    site.close()
    operator.close()


def test_the_kit_listens_on_its_provisioned_hosts_only(fed: LocalFederation) -> None:
    config = (fed.kits / "coordinator" / "coordinator.toml").read_text()
    assert f'listen = ["localhost:{fed.port}", "127.0.0.1:{fed.port}"]' in config
    kit = TlsKit.from_kit_dir(fed.kits / "operators" / "operator")
    addresses = {f"127.0.0.1:{fed.port}", f"localhost:{fed.port}"} | {
        f"[{info[4][0]}]:{fed.port}" if ":" in info[4][0] else f"{info[4][0]}:{fed.port}"
        for info in socket.getaddrinfo("localhost", fed.port, type=socket.SOCK_STREAM)
    }
    for address in sorted(addresses):
        options = [("grpc.ssl_target_name_override", "localhost")]
        with grpc.secure_channel(address, channel_credentials(kit), options=options) as channel:
            stub = admin_pb2_grpc.AdminStub(channel)
            assert stub.ListRuns(admin_pb2.ListRunsRequest(), timeout=10) is not None, address
    # 127.0.0.2 is this host too (all of 127/8 is loopback), but not a provisioned address: a
    # coordinator bound to 0.0.0.0 would answer there
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.2", fed.port)):
        pass


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_store_is_private_and_its_audit_head_file_verifies(
    fed: LocalFederation, capsys: pytest.CaptureFixture[str]
) -> None:
    fed.admin().ListRuns(admin_pb2.ListRunsRequest())
    store = fed.kits / "coordinator" / "coordinator.sqlite"
    head_file = store.with_name(store.name + ".head")
    site = _site_stub(fed, "hospital-a")
    site.Hello(federation_pb2.HelloRequest(site_id="hospital-a"))  # an audited change
    head = read_head_file(head_file)
    assert head.seq >= 1 and head.ts is not None
    for path in (store, Path(f"{store}-wal"), Path(f"{store}-shm"), head_file):
        assert _mode(path) == 0o600, path
    shipped = fed.workdir / "shipped.head"
    shipped.write_bytes(head_file.read_bytes())
    assert fedctl(["audit", "verify", "--db", str(store), "--head-file", str(shipped)]) == 0
    assert "audit chain OK" in capsys.readouterr().out


def test_a_name_and_one_of_its_addresses_on_one_port_bind_once(fed: LocalFederation) -> None:
    """localfed's kit lists localhost and 127.0.0.1: where localhost resolves to ::1 and
    127.0.0.1, binding both entries naively would bind 127.0.0.1 twice (a conflict without
    SO_REUSEPORT, which the coordinator turns off)."""
    credentials = server_credentials(TlsKit.from_kit_dir(fed.kits / "coordinator"))
    port = free_port()

    def resolve(host: str, port_: int, type: int = 0) -> list[tuple[Any, ...]]:
        assert host == "localhost"
        return [
            (socket.AF_INET6, type, 6, "", ("::1", port_, 0, 0)),
            (socket.AF_INET, type, 6, "", ("127.0.0.1", port_)),
        ]

    async def bind(listen: list[str]) -> list[tuple[str, int]]:
        server = aio.server(options=[("grpc.so_reuseport", 0)])
        try:
            return bind_listen_addresses(server, listen, credentials, resolve)
        finally:
            await server.stop(0)

    bound = asyncio.run(bind([f"localhost:{port}", f"127.0.0.1:{port}"]))
    addresses = [address for address, _ in bound]
    assert addresses.count(f"127.0.0.1:{port}") == 1 and len(set(addresses)) == len(addresses)
    assert all(p == port for _, p in bound)

    async def naive() -> None:
        other = free_port()
        server = aio.server(options=[("grpc.so_reuseport", 0)])
        try:
            assert server.add_secure_port(f"127.0.0.1:{other}", credentials) == other
            with pytest.raises(RuntimeError):
                server.add_secure_port(f"127.0.0.1:{other}", credentials)
        finally:
            await server.stop(0)

    asyncio.run(naive())
    with pytest.raises(ConfigError, match=r"cannot bind 192\.0\.2\.77"):
        asyncio.run(bind([f"192.0.2.77:{port}"]))  # not an address of this host
