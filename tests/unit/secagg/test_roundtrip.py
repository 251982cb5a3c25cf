"""End-to-end sessions through the real client and server state machines."""

from __future__ import annotations

import numpy as np
import pytest

from secagg.config import Stage
from tests.unit.secagg.harness import Federation, exact_sum, make_config, random_inputs

pytestmark = pytest.mark.unit


def test_no_dropouts_gives_exact_sum() -> None:
    config = make_config(n=5, t=3, d=257)
    inputs = random_inputs(config, seed=1)
    server = Federation(config, inputs).run()
    assert server.stage is Stage.DONE and server.result is not None
    assert server.result.survivors == frozenset(config.participants)
    np.testing.assert_array_equal(server.result.total, exact_sum(inputs, config.participants, 257))


@pytest.mark.parametrize("stage", [Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK])
def test_one_dropout_gives_exact_survivor_sum(stage: Stage) -> None:
    config = make_config(n=5, t=3, d=64)
    inputs = random_inputs(config, seed=2)
    server = Federation(config, inputs, drops={stage: {2}}).run()
    assert server.result is not None
    survivors = [1, 3, 4, 5] if stage is not Stage.UNMASK else [1, 2, 3, 4, 5]
    assert server.result.survivors == frozenset(survivors)
    np.testing.assert_array_equal(server.result.total, exact_sum(inputs, survivors, 64))


def test_too_many_dropouts_abort_with_reason() -> None:
    config = make_config(n=5, t=3, d=16)
    server = Federation(
        config, random_inputs(config, 3), drops={Stage.MASKED_INPUT: {1, 2, 3}}
    ).run()
    assert server.stage is Stage.ABORTED and server.result is None
    assert server.abort_reason is not None and "threshold is 3" in server.abort_reason


def test_persisted_states_round_trip() -> None:
    config = make_config(n=4, t=3, d=33)
    inputs = random_inputs(config, seed=4)
    fed = Federation(config, inputs, drops={Stage.CONSISTENCY_CHECK: {4}}, persist=True)
    server = fed.run()
    assert server.result is not None
    np.testing.assert_array_equal(server.result.total, exact_sum(inputs, [1, 2, 3, 4], 33))
