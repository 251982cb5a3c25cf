"""The site agent as a process: it keeps a heartbeat while it cannot reach the coordinator, and
SIGTERM (docker stop, Kubernetes) stops it cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fedctl.localfed import LocalFederation, flchain_hospitals

pytestmark = pytest.mark.integration


def test_sigterm_stops_the_agent_with_exit_code_zero(tmp_path: Path) -> None:
    federation = LocalFederation(tmp_path / "fed", ("hospital-a", "hospital-b"))
    federation.prepare()
    flchain_hospitals(federation)
    try:
        launched = time.time()
        federation.start_site("hospital-a")  # no coordinator: the agent retries with backoff
        deadline = time.monotonic() + 60
        while "coordinator unreachable" not in federation.log_text("hospital-a"):
            assert time.monotonic() < deadline, federation.log_text("hospital-a")
            assert federation.alive("hospital-a"), federation.log_text("hospital-a")
            time.sleep(0.2)
        heartbeat = federation.site_kit("hospital-a") / "state" / "heartbeat.json"
        while not heartbeat.exists():  # liveness for the container health check
            assert time.monotonic() < deadline, "no heartbeat file"
            time.sleep(0.2)
        record = json.loads(heartbeat.read_text())
        assert record["connected"] is False
        assert launched <= record["ts"] <= time.time()  # written by this agent, not left over
        process = federation.processes["hospital-a"]
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=20) == 0
        except subprocess.TimeoutExpired:
            pytest.fail("the site agent ignored SIGTERM")
        assert "site agent stopped" in federation.log_text("hospital-a")
    finally:
        federation.stop_all()
