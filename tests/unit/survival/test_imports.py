"""Dependency rules: the coordinator imports schema/timegrid/spec and must never load torch;
`survival` knows nothing of federation, site_agent, coordinator or secagg."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

FORBIDDEN = ("torch", "pandas", "sksurv", "federation", "site_agent", "coordinator", "secagg")


def _loaded_after(modules: str) -> set[str]:
    code = f"import sys, {modules}; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    return set(out.stdout.split())


def test_torch_free_modules_stay_torch_free() -> None:
    loaded = _loaded_after("survival.schema, survival.timegrid, survival.spec")
    assert not loaded & set(FORBIDDEN)


def test_survival_imports_nothing_of_the_federation() -> None:
    loaded = _loaded_after("survival.models, survival.loss, survival.data")
    assert "torch" in loaded  # the check sees real imports
    assert not loaded & {"federation", "site_agent", "coordinator", "secagg", "pandas"}
