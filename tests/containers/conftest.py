"""Container tests run only when asked: `make test-containers` (what .ci/run does, after
`make test`) or `pytest -m containers`. A plain `pytest` (make test) deselects them, so they are
neither run twice in CI nor reported as skipped; a note at the end says how to run them.

When they run, a missing podman, podman-compose or base image is a failure with the reason
(the `images` fixture), never a skip.
"""

from __future__ import annotations

import pytest

from tests.containers import podman


def _asked(config: pytest.Config) -> bool:
    return "containers" in (config.option.markexpr or "") or podman.required()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _asked(config):
        return
    deselected = [item for item in items if item.get_closest_marker("containers") is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item.get_closest_marker("containers") is None]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _asked(terminalreporter.config):
        terminalreporter.write_line(
            "real-container tests (tests/containers) were deselected: run `make test-containers`"
        )
