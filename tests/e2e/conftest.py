"""Helpers for end-to-end tests: a real coordinator and real site agents as separate processes."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedctl.localfed import LocalFederation, flchain_hospitals
from federation.wire.v1 import admin_pb2, federation_pb2

HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")
TERMINAL = {
    federation_pb2.RUN_STATE_COMPLETED,
    federation_pb2.RUN_STATE_FAILED,
    federation_pb2.RUN_STATE_STOPPED,
}


def e2e_plan(rounds: int, *, train_timeout: float = 25.0, stage_timeout: float = 6.0) -> str:
    """A small but complete plan: DP, secure aggregation, evaluation in the last round."""
    from fedctl.demo import plan_text

    text = plan_text(rounds, local_epochs=1)
    text = text.replace("stage_timeout_s = 30.0", f"stage_timeout_s = {stage_timeout}")
    text = text.replace("train_timeout_s = 240.0", f"train_timeout_s = {train_timeout}")
    return text


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[LocalFederation]:
    fed = LocalFederation(tmp_path / "fed", HOSPITALS, viewer=True)
    fed.prepare()
    flchain_hospitals(fed)
    try:
        yield fed
    finally:
        fed.stop_all()


def submit(stub: object, text: str) -> str:
    response = stub.SubmitRun(  # type: ignore[attr-defined]
        admin_pb2.SubmitRunRequest(format=admin_pb2.PLAN_FORMAT_TOML, plan_text=text)
    )
    assert not response.errors, response.errors
    return str(response.run_id)


def wait_until(
    stub: object, run_id: str, predicate: object, timeout: float = 240.0
) -> admin_pb2.RunStatus:
    """Poll GetRun until predicate(status) holds (or the run ends, or time runs out)."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = stub.GetRun(admin_pb2.GetRunRequest(run_id=run_id))  # type: ignore[attr-defined]
        if predicate(status) or status.state in TERMINAL:  # type: ignore[operator]
            return status
        time.sleep(0.3)
    raise AssertionError(f"timed out; last status: {status}")


def site_db(fed: LocalFederation, hospital: str) -> sqlite3.Connection:
    return sqlite3.connect(fed.site_kit(hospital) / "state" / "site.sqlite")


def site_audit(fed: LocalFederation, hospital: str) -> list[tuple[str, dict[str, object]]]:
    path = fed.site_kit(hospital) / "state" / "audit.sqlite"
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT action, detail FROM audit_log ORDER BY seq").fetchall()
    return [(action, json.loads(detail)) for action, detail in rows]


def coordinator_store(fed: LocalFederation) -> Path:
    return fed.kits / "coordinator" / "coordinator.sqlite"
