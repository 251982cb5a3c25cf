"""`fedctl logs RUN` against a real coordinator process over loopback mutual TLS: a tiny run that
one site accepts and the other refuses (so it fails at the offer, in seconds, with no training)
shows its submission, both plan decisions with the refusal code, and its end; `--follow`,
started before the sites answer, prints the same story and exits 0 when the run ends."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest

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

PLAN = AGE_PLAN.format(name="logs")
SITES = TWO_SITES


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with coordinator_only(tmp_path_factory.mktemp("logs") / "fed", SITES) as federation:
        yield federation


def _answer_offers(fed: LocalFederation, run_id: str) -> None:
    """hospital-a accepts the plan, hospital-b refuses it on policy: the run fails at once."""
    for site in SITES:
        stub = site_stub(fed, site)
        task = stub.PullTask(federation_pb2.PullTaskRequest(site_id=site, wait_ms=5000))
        while task.kind == federation_pb2.TASK_KIND_RUN_FINISHED:  # an earlier test's run
            stub.PushResult(federation_pb2.TaskResult(task_id=task.task_id, kind=task.kind))
            task = stub.PullTask(federation_pb2.PullTaskRequest(site_id=site, wait_ms=5000))
        assert task.kind == federation_pb2.TASK_KIND_PLAN_OFFER and task.run_id == run_id
        result = federation_pb2.TaskResult(task_id=task.task_id, kind=task.kind)
        if site == "hospital-b":
            result.error.code = federation_pb2.TASK_ERROR_POLICY_REFUSED
            result.error.message = "feature age is not allowed here"
        stub.PushResult(result, timeout=10)


def _submit(fed: LocalFederation) -> str:
    admin = fed.admin()
    for site in SITES:
        site_stub(fed, site).Hello(federation_pb2.HelloRequest(site_id=site))
    run_id: str = admin.SubmitRun(admin_pb2.SubmitRunRequest(plan_text=PLAN)).run_id
    assert run_id
    return run_id


def _wait_terminal(fed: LocalFederation, run_id: str, timeout: float = 30) -> None:
    admin = fed.admin()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = admin.GetRun(admin_pb2.GetRunRequest(run_id=run_id)).state
        if state == federation_pb2.RUN_STATE_FAILED:
            return
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not end within {timeout} s")


def test_logs_show_a_runs_submission_decisions_and_end(
    fed: LocalFederation, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = _submit(fed)
    _answer_offers(fed, run_id)
    _wait_terminal(fed, run_id)
    config = str(fed.operator_config())
    capsys.readouterr()

    assert fedctl(["logs", run_id, "--config", config]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert "run_submitted" in lines[0] and "offered to 2 sites" in lines[0]
    assert any("hospital-a" in line and "plan offer: accepted" in line for line in lines)
    assert any(
        "hospital-b" in line and "plan offer: refused (policy_refused" in line for line in lines
    )
    assert "run failed" in lines[-1] and "only 1 of the 2 sites needed accepted" in lines[-1]

    assert fedctl(["logs", run_id, "--config", config, "--output", "json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["run_id"] for r in records} == {run_id}
    assert records[0]["action"] == "run_submitted"
    assert records[-1]["detail"]["status"] == "failed"

    assert fedctl(["logs", run_id, "--config", config, "--site", "hospital-b"]) == 0
    only_b = capsys.readouterr().out.splitlines()
    assert len(only_b) == 1 and "hospital-b" in only_b[0] and "refused" in only_b[0]


def test_follow_prints_as_the_run_goes_and_exits_when_it_ends(
    fed: LocalFederation, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = _submit(fed)
    config = str(fed.operator_config())
    capsys.readouterr()
    code: list[int] = []
    follower = threading.Thread(
        target=lambda: code.append(fedctl(["logs", run_id, "--follow", "--config", config]))
    )
    follower.start()
    time.sleep(1.5)  # the follower has printed the submission and is polling
    assert follower.is_alive()
    _answer_offers(fed, run_id)
    follower.join(timeout=60)
    assert not follower.is_alive() and code == [0]
    lines = capsys.readouterr().out.splitlines()
    assert "run_submitted" in lines[0]
    assert "run failed" in lines[-1]
    assert len(lines) == len(set(lines))
