"""deploy/healthcheck.py's site liveness rule (the script is copied into images, not a package)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "healthcheck.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("concordia_healthcheck", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_fresh_heartbeat_is_healthy_and_says_whether_the_coordinator_is_reachable(
    tmp_path: Path,
) -> None:
    (tmp_path / "heartbeat.json").write_text(json.dumps({"ts": 1000.0, "connected": False}))
    healthy, why = _module().check_heartbeat(tmp_path, 60.0, now=1030.0)
    assert healthy, why
    assert "not connected" in why


def test_a_stale_missing_or_garbled_heartbeat_is_unhealthy(tmp_path: Path) -> None:
    check = _module().check_heartbeat
    assert not check(tmp_path, 60.0, now=0.0)[0]  # missing
    (tmp_path / "heartbeat.json").write_text("{not json")
    assert not check(tmp_path, 60.0, now=0.0)[0]
    (tmp_path / "heartbeat.json").write_text(json.dumps({"ts": 1000.0, "connected": True}))
    healthy, why = check(tmp_path, 60.0, now=1061.0)
    assert not healthy and "stuck" in why


def test_state_dir_comes_from_the_site_config_relative_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONCORDIA_SITE_STATE_DIR", raising=False)
    config = tmp_path / "site.toml"
    config.write_text('[site]\nid = "hospital-a"\nstate_dir = "state"\n')
    assert _module()._state_dir(config) == tmp_path / "state"
    monkeypatch.setenv("CONCORDIA_SITE_STATE_DIR", "/state")
    assert _module()._state_dir(config) == Path("/state")


def test_coordinator_port_comes_from_a_listen_string_or_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONCORDIA_SERVER_LISTEN", raising=False)
    config = tmp_path / "coordinator.toml"
    config.write_text('[server]\nlisten = ["coord.example.org:7443", "10.0.0.5:7443"]\n')
    assert _module()._listen_port(config) == 7443
    config.write_text('[server]\nlisten = "127.0.0.1:6000"\n')
    assert _module()._listen_port(config) == 6000
    monkeypatch.setenv("CONCORDIA_SERVER_LISTEN", "0.0.0.0:50051,[::]:50051")
    assert _module()._listen_port(config) == 50051
