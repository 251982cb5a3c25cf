"""`model.baseline = "per-site"` with real site agents: each hospital keeps its own baseline
hazard; only the covariate part of its update ever enters a secure sum."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from federation.plan import PlanError, parse_plan
from federation.releases import Purpose
from federation.sessions import vector_length
from tests.adversarial.harness import CheatingCoordinator, Consortium, make_consortium
from tests.adversarial.test_distributed_trust import plan_text

pytestmark = [pytest.mark.integration, pytest.mark.adversarial]

A, B, C = "hospital-a", "hospital-b", "hospital-c"


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    built = make_consortium(
        tmp_path_factory.mktemp("base") / "fed", (A, B, C), {"lifetime_epsilon": 1000.0}
    )
    try:
        yield built
    finally:
        built.close()


def per_site_plan_text() -> str:
    return plan_text(mode="local").replace("[model]\n", '[model]\nbaseline = "per-site"\n')


def test_per_site_baselines_need_local_mode() -> None:
    text = plan_text().replace("[model]\n", '[model]\nbaseline = "per-site"\n')
    with pytest.raises(PlanError, match=r'needs training\.mode = "local"'):
        parse_plan(text)


def test_the_baseline_stays_at_the_site_and_carries_over_rounds(consortium: Consortium) -> None:
    plan = parse_plan(per_site_plan_text())
    k = plan.time_grid.n_intervals
    evil = CheatingCoordinator(consortium, plan, "run-per-site")
    evil.offer((A,))
    evil.prepare((A,), Purpose.UPDATE, 1, 0)
    update = evil.release(A, Purpose.UPDATE, 1)
    # the release is the covariate part (and the weight): no baseline coordinate leaves
    assert update.size == vector_length(plan, Purpose.UPDATE)
    n_params = plan.feature_schema.n_encoded + k  # linear: baseline + one weight per feature
    assert update.size == n_params - k + 1
    baselines = consortium.agents[A].handlers.baselines
    first = baselines.before("run-per-site", 2, lambda: np.zeros(k))
    initial = baselines.before("run-per-site", 1, lambda: np.full(k, np.nan))
    assert np.all(np.isnan(initial))  # nothing kept before round 1: it starts from its stats
    assert np.all(np.isfinite(first)) and np.abs(first).max() > 0
    # a retried step whose release was never masked reuses it: the baseline does not move twice
    evil.prepare((A,), Purpose.UPDATE, 1, 1)
    np.testing.assert_array_equal(baselines.before("run-per-site", 2, lambda: np.zeros(k)), first)
    # round 2 starts from the baseline round 1 left, and moves it again
    evil.prepare((A,), Purpose.UPDATE, 2, 0)
    second = baselines.before("run-per-site", 3, lambda: np.zeros(k))
    assert not np.array_equal(second, first)
    assert baselines.path("run-per-site").stat().st_mode & 0o777 == 0o600
