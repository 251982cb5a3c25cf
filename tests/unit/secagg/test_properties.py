"""The protocol's central property, over random sizes, thresholds, inputs and dropouts:
the server returns exactly the mod-2^32 sum of the U3 inputs, or aborts when < t remain."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg.config import Stage
from tests.unit.secagg.harness import ORDER, Federation, exact_sum, make_config, random_inputs

pytestmark = pytest.mark.unit


@st.composite
def scenarios(draw: st.DrawFn, max_n: int = 20) -> tuple[int, int, int, dict[Stage, set[int]], int]:
    n = draw(st.integers(3, max_n))
    t = draw(st.integers(2, n))
    d = draw(st.integers(1, 40))
    ids = list(range(1, n + 1))
    drops: dict[Stage, set[int]] = {}
    for stage in ORDER:
        # mostly small dropouts, sometimes enough to fall below the threshold
        drops[stage] = set(draw(st.lists(st.sampled_from(ids), max_size=max(1, n // 3))))
    seed = draw(st.integers(0, 2**32 - 1))
    return n, t, d, drops, seed


def _check(n: int, t: int, d: int, drops: dict[Stage, set[int]], seed: int, persist: bool) -> None:
    config = make_config(n, t, d, round_=seed % 1000)
    inputs = random_inputs(config, seed)
    server = Federation(config, inputs, drops=drops, persist=persist).run()
    alive = set(config.participants)
    expected_abort = False
    u3: set[int] = set()
    for stage in ORDER:
        alive -= drops[stage]
        if len(alive) < t:
            expected_abort = True
            break
        if stage is Stage.MASKED_INPUT:
            u3 = set(alive)
    if expected_abort:
        assert server.stage is Stage.ABORTED and server.result is None
        assert server.abort_reason is not None and f"threshold is {t}" in server.abort_reason
        return
    assert server.stage is Stage.DONE and server.result is not None, server.abort_reason
    assert server.result.survivors == frozenset(u3)
    assert server.result.total.dtype == np.uint32
    np.testing.assert_array_equal(server.result.total, exact_sum(inputs, u3, d))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_exact_sum_of_survivors_or_abort(
    scenario: tuple[int, int, int, dict[Stage, set[int]], int],
) -> None:
    _check(*scenario, persist=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(max_n=10))
def test_same_with_every_state_round_tripped_between_stages(
    scenario: tuple[int, int, int, dict[Stage, set[int]], int],
) -> None:
    _check(*scenario, persist=True)
