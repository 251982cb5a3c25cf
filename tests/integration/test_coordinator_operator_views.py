"""What an operator sees of concurrent runs and of site budgets, against a real coordinator
process over loopback mutual TLS with hand-driven sites: `fedctl run` refuses a plan whose sites
are in a live run (naming the combined ε) unless `--allow-concurrent`, and `fedctl sites` shows
the lifetime ε of a site's latest result (not its Hello's), its last-seen age and the timeout."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.admin_service import ONLINE_WINDOW_S
from fedctl.cli import run as fedctl
from fedctl.localfed import LocalFederation
from federation.wire.v1 import admin_pb2, federation_pb2
from tests.integration.coordinator_process import (
    AGE_PLAN,
    TWO_SITES,
    coordinator_only,
    site_stub,
)

pytestmark = pytest.mark.integration

PLAN = AGE_PLAN.replace("{name}", "concurrent") + "[privacy]\nepsilon = {epsilon}\n"
SITES = TWO_SITES


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with coordinator_only(tmp_path_factory.mktemp("views") / "fed", SITES) as federation:
        yield federation


def _plan(tmp_path: Path, epsilon: float) -> str:
    path = tmp_path / f"plan-{epsilon:g}.toml"
    path.write_text(PLAN.format(epsilon=epsilon))
    return str(path)


def test_overlapping_runs_are_refused_unless_allowed_and_sites_show_fresh_epsilon(
    fed: LocalFederation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sites = {name: site_stub(fed, name) for name in SITES}
    policy = federation_pb2.PolicySummary(max_epsilon_per_run=5.0, lifetime_epsilon_budget=10.0)
    for name, stub in sites.items():
        stub.Hello(federation_pb2.HelloRequest(site_id=name, agent_version="t", policy=policy))
    config = str(fed.operator_config())
    capsys.readouterr()

    submit = ["run", _plan(tmp_path, 2), "--detach", "--config", config, "--output", "json"]
    assert fedctl(submit) == 0
    first = json.loads(capsys.readouterr().out)["run_id"]

    # the second run would charge both sites again: refused (and so is its dry run), exit 2
    for extra in (["--validate-only"], ["--detach"]):
        assert fedctl(["run", _plan(tmp_path, 3), *extra, "--config", config]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err == [
            f"fedctl: error: site {site} is already in live run {first} (ε 2): with this plan"
            " (ε 3) it could spend up to ε 5 combined (an upper bound: the sum of the plans' ε)"
            for site in SITES
        ] + [
            "fedctl: error: pass --allow-concurrent (SubmitRunRequest.allow_concurrent)"
            " to start it anyway"
        ]
    admin = fed.admin()
    assert [r.run_id for r in admin.ListRuns(admin_pb2.ListRunsRequest()).runs] == [first]
    entries = admin.GetAudit(admin_pb2.GetAuditRequest(limit=1000)).entries
    refused = [json.loads(e.detail_json) for e in entries if e.action == "run_refused"]
    assert [r["validate_only"] for r in refused] == [True, False]

    code = fedctl(["run", _plan(tmp_path, 3), "--allow-concurrent", "--detach", "--config", config])
    assert code == 0
    assert "submitted run-" in capsys.readouterr().out
    assert len(admin.ListRuns(admin_pb2.ListRunsRequest()).runs) == 2

    # hospital-a answers the first run's offer with a privacy report: fedctl sites shows it
    stub = sites["hospital-a"]
    task = stub.PullTask(federation_pb2.PullTaskRequest(site_id="hospital-a", wait_ms=5000))
    assert task.kind == federation_pb2.TASK_KIND_PLAN_OFFER
    report = federation_pb2.PrivacyReport(
        epsilon_spent_run=0.25, epsilon_spent_lifetime=4.5, delta=1e-5
    )
    stub.PushResult(federation_pb2.TaskResult(task_id=task.task_id, kind=task.kind, privacy=report))
    listed = {s.site_id: s for s in admin.ListSites(admin_pb2.ListSitesRequest()).sites}
    assert listed["hospital-a"].policy.lifetime_epsilon_spent == 4.5
    assert listed["hospital-b"].policy.lifetime_epsilon_spent == 0.0
    assert all(s.state == admin_pb2.SITE_STATE_ONLINE for s in listed.values())

    assert fedctl(["sites", "--config", config]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"online = last call < {ONLINE_WINDOW_S:g} s ago"
    line_a = next(line for line in lines if line.startswith("hospital-a"))
    assert " online " in line_a and "s ago" in line_a and "lifetime ε 4.50/10" in line_a
