"""`python -m site_agent check`: the report a data team reads, its exit codes, and no state."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedctl.demo import plan_text
from fedctl.localfed import LocalFederation, flchain_hospitals
from site_agent.__main__ import main

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("check")
    fed = LocalFederation(root / "fed", ("hospital-a", "hospital-b"))
    fed.prepare()
    flchain_hospitals(fed)
    plan = root / "plan.toml"
    plan.write_text(plan_text(3))
    yield fed.site_kit("hospital-a") / "site.toml", plan


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code = main(["check", *argv, "--output", "json"])
    return code, json.loads(capsys.readouterr().out)


def test_an_accepted_plan_exits_0_with_the_documented_keys(
    kit: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, plan = kit
    code, report = _json(capsys, "--config", str(config), "--plan", str(plan))
    assert code == 0
    for key in ("rows_read", "rows_valid", "excluded", "features", "events", "plan", "warnings"):
        assert key in report
    decision = report["plan"]
    assert isinstance(decision, dict) and decision["accepted"] is True
    assert decision["epsilon_run"] == 3.0 and decision["epsilon_remaining"] == 7.0
    assert report["rows_valid"] == report["rows_read"]
    assert not (config.parent / "state" / "site.sqlite").exists()  # check writes no ledger


def test_a_plan_outside_the_policy_exits_1_with_every_reason(
    kit: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config, plan = kit
    greedy = tmp_path / "greedy.toml"
    greedy.write_text(plan.read_text().replace("epsilon = 3.0", "epsilon = 5.0"))
    code, report = _json(capsys, "--config", str(config), "--plan", str(greedy))
    assert code == 1
    decision = report["plan"]
    assert isinstance(decision, dict) and decision["accepted"] is False
    assert any("exceeds policy.max_epsilon_per_run 3" in r for r in decision["reasons"])


def test_text_output_and_bad_input(
    kit: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config, plan = kit
    assert main(["check", "--config", str(config), "--plan", str(plan)]) == 0
    text = capsys.readouterr().out
    assert "ACCEPTED" in text and "hold-out split:" in text and "levels: F" in text
    broken = tmp_path / "broken.toml"
    broken.write_text("name = ")
    assert main(["check", "--config", str(config), "--plan", str(broken)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert main(["check", "--config", str(tmp_path / "none.toml")]) == 2
    assert "no such configuration file" in capsys.readouterr().err


def test_without_a_plan_the_outcome_is_checked(
    kit: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = kit
    code, report = _json(capsys, "--config", str(config))
    assert code == 0 and report["plan"] is None and report["features"] == []
    assert isinstance(report["events"], int) and report["events"] > 0
