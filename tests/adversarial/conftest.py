"""One provisioned consortium of real site agents per module; each test is its own run."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.adversarial.harness import Consortium, make_consortium

SITES = ("hospital-a", "hospital-b", "hospital-c", "hospital-d")
# Each test opens its own run; the lifetime budget is large so that tests never share a limit.
POLICY = {"lifetime_epsilon": 10_000.0}
_runs = itertools.count(1)


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    workdir: Path = tmp_path_factory.mktemp("adversarial") / "fed"
    built = make_consortium(workdir, SITES, POLICY)
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def run_id() -> str:
    return f"run-evil-{next(_runs)}"
