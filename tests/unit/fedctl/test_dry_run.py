"""`fedctl run --dry-run`: it submits with dry_run, follows the run to its end, prints one row per
site (would accept or refuses, ε it would spend, lifetime ε, reason) and exits 0 only if the
coordinator completed the dry run (at least the quorum would accept)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedctl import runs
from federation.wire.v1 import admin_pb2
from federation.wire.v1 import federation_pb2 as fpb

pytestmark = pytest.mark.unit


def _final(state: Any, message: str) -> admin_pb2.RunStatus:
    status = admin_pb2.RunStatus(
        run_id="run-dry", state=state, stage=admin_pb2.RUN_STAGE_DONE, message=message
    )
    status.sites.add(
        site_id="hospital-a",
        decision=admin_pb2.PLAN_DECISION_ACCEPTED,
        epsilon_spent=3.0,
        epsilon_lifetime=0.5,
    )
    status.sites.add(
        site_id="hospital-b",
        decision=admin_pb2.PLAN_DECISION_REFUSED,
        reason="feature 'kappa' not found",
        epsilon_spent=3.0,
    )
    status.sites.add(
        site_id="hospital-c",
        decision=admin_pb2.PLAN_DECISION_REFUSED,
        reason="plan.privacy.epsilon 3 exceeds policy.max_epsilon_per_run 1",
        epsilon_spent=1.0,
        epsilon_lifetime=2.25,
    )
    status.sites.add(site_id="hospital-d", decision=admin_pb2.PLAN_DECISION_PENDING)
    return status


class Stub:
    def __init__(self, final: admin_pb2.RunStatus) -> None:
        self.final = final
        self.submitted: list[admin_pb2.SubmitRunRequest] = []

    def SubmitRun(self, request: admin_pb2.SubmitRunRequest) -> admin_pb2.SubmitRunResponse:
        self.submitted.append(request)
        return admin_pb2.SubmitRunResponse(run_id="run-dry", plan_sha256="ab" * 32)

    def WatchRun(self, request: admin_pb2.WatchRunRequest) -> Iterator[admin_pb2.RunStatus]:
        yield self.final

    def GetRun(self, request: admin_pb2.GetRunRequest) -> admin_pb2.RunStatus:
        return self.final


def _run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, final: admin_pb2.RunStatus
) -> tuple[int, Stub]:
    stub = Stub(final)
    monkeypatch.setattr(runs, "admin_stub", lambda _config: (stub, None))
    plan = tmp_path / "plan.toml"
    plan.write_text('name = "x"\n')
    args: Any = argparse.Namespace(
        plan=plan,
        validate_only=False,
        detach=False,
        allow_concurrent=False,
        dry_run=True,
        config=None,
        output="text",
    )
    return runs.cmd_run(args), stub


def test_a_dry_run_prints_a_table_per_site_and_exits_0_at_quorum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    message = "dry run: 1 of 4 sites would accept (quorum 1); refused: hospital-b, hospital-c"
    code, stub = _run(tmp_path, monkeypatch, _final(fpb.RUN_STATE_COMPLETED, message))
    assert code == 0
    assert stub.submitted[0].dry_run and not stub.submitted[0].validate_only
    out = capsys.readouterr().out
    table = out[out.index("site ") :].splitlines()
    assert table == [
        "site        answer        ε run  ε lifetime  reason",
        "hospital-a  would accept  3.00   0.50        -",
        "hospital-b  refuses       3.00   0.00        feature 'kappa' not found",
        "hospital-c  refuses       1.00   2.25        plan.privacy.epsilon 3 exceeds"
        " policy.max_epsilon_per_run 1",
        "hospital-d  no answer     -      -           -",
        message,
    ]
    assert out.startswith("dry run run-dry")


def test_a_dry_run_below_the_quorum_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    message = "dry run: 1 of 4 sites would accept (quorum 2)"
    code, _ = _run(tmp_path, monkeypatch, _final(fpb.RUN_STATE_FAILED, message))
    assert code == 1
    assert "hospital-c  refuses" in capsys.readouterr().out
