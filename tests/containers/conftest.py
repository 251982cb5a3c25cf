"""Container tests run only when asked: `make test-containers` (what .ci/run does) or
`pytest -m containers`. A plain `pytest` (make test) skips them, saying how to run them.

With CONCORDIA_REQUIRE_CONTAINERS=1 (CI) they always run, and a missing podman, podman-compose
or base image is a failure with the reason, never a skip.
"""

from __future__ import annotations

import pytest

from tests.containers import podman


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    asked = "containers" in (config.option.markexpr or "")
    for item in items:
        if item.get_closest_marker("containers") is None or podman.required():
            continue
        if not asked:
            item.add_marker(pytest.mark.skip(reason="real containers: run `make test-containers`"))
        elif podman.missing_tools():
            missing = " and ".join(podman.missing_tools())
            item.add_marker(
                pytest.mark.skip(
                    reason=f"{missing} not installed (../shared/CONTAINERS.md); with "
                    f"{podman.REQUIRE_ENV}=1 this is a failure"
                )
            )
