"""The torch-free images install an explicit dependency list (concordia itself goes in with
--no-deps, since its own dependencies include torch): keep those lists equal to pyproject.toml."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# model code and the site ledger's accountant: never in the coordinator image
SITE_ONLY = {"torch", "opacus", "dp-accounting"}

pytestmark = pytest.mark.unit


def _name(requirement: str) -> str:
    for stop in "<>=!~;[ ":
        requirement = requirement.split(stop, 1)[0]
    return requirement.lower().replace("_", "-")


def _requirements(path: Path) -> list[str]:
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            lines += _requirements(path.parent / line[3:].strip())
        elif line:
            lines.append(line.replace(" ", ""))
    return lines


def _pyproject() -> Any:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_coordinator_requirements_are_pyproject_without_torch() -> None:
    project = _pyproject()
    expected = [d.replace(" ", "") for d in project["dependencies"] if _name(d) not in SITE_ONLY]
    assert sorted(_requirements(REPO / "deploy/requirements/coordinator.txt")) == sorted(expected)


def test_demo_tools_requirements_add_only_the_data_extra() -> None:
    project = _pyproject()
    core = [d.replace(" ", "") for d in project["dependencies"] if _name(d) not in SITE_ONLY]
    data = [d.replace(" ", "") for d in project["optional-dependencies"]["data"]]
    got = _requirements(REPO / "deploy/requirements/demo-tools.txt")
    assert sorted(got) == sorted(core + data)
    assert not {_name(r) for r in got} & SITE_ONLY
