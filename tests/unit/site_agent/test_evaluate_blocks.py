"""A real site agent's final evaluation under a plan with subgroups: the release carries the
blocks, the ledger charges the Gaussian actually run (noise multiplier σ on the whole release's
sensitivity), and the site keeps its own figures, per subgroup, in its local audit log."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest

from federation.evaluation_release import EvaluationRelease
from federation.plan import RunPlan
from federation.releases import MAX_SITES, Purpose
from federation.wire.v1 import federation_pb2 as pb
from secagg.quantize import dequantize_sum
from tests.adversarial.harness import Consortium, adversarial_plan, audit_actions
from tests.unit.site_agent.test_handlers import local_task, offer, three_hospitals

pytestmark = pytest.mark.unit

SITE = "hospital-a"
ROUNDS = 3
_runs = itertools.count(1)


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    yield from three_hospitals(tmp_path_factory, "blocks")


@pytest.fixture(scope="module")
def plan() -> RunPlan:
    built = adversarial_plan(quorum=3, rounds=ROUNDS)  # the demo plan: sex and an age band
    assert built.evaluation.subgroups == ["sex", "age"]
    return built


def test_the_final_evaluation_releases_charges_and_keeps_the_subgroup_blocks(
    consortium: Consortium, plan: RunPlan
) -> None:
    agent = consortium.agents[SITE]
    own: dict[int, dict[str, float]] = {}
    for round_ in (1, ROUNDS):  # one run each: the plan's ε covers one evaluation
        run_id = f"blocks-{next(_runs)}"
        assert not agent.handle(offer(run_id, plan)).HasField("error")
        result = agent.handle(local_task(plan, run_id, pb.TASK_KIND_EVALUATE, round_))
        assert not result.HasField("error"), result.error.message
        release = EvaluationRelease.for_round(plan, round_)
        cached = agent.cache.get(run_id, Purpose.METRICS.value, round_)
        assert cached is not None and cached.vector is not None
        assert cached.vector.size == release.length
        charged = [r for r in agent.ledger.releases(run_id) if r["purpose"] == "metrics"]
        assert len(charged) == 1  # the same mechanism's multiplier, whatever the blocks
        assert charged[0]["noise_multiplier"] == plan.privacy.metrics_noise_multiplier
        assert charged[0]["partition"] == "holdout" and charged[0]["steps"] == 1
        # the site's own figures: its own noised release decoded, blocks in the final one only
        entries = [e for e in audit_actions(agent, "own_metrics") if e["run_id"] == run_id]
        own[round_] = entries[-1]["metrics"]  # type: ignore[assignment]
    final = EvaluationRelease.for_round(plan, ROUNDS)
    assert final.n_blocks == 1 + 2 + 2
    assert not any(k.startswith("subgroup:") for k in own[1])
    women, men = own[ROUNDS]["subgroup:sex=F:patients"], own[ROUNDS]["subgroup:sex=M:patients"]
    cached = agent.cache.get(run_id, Purpose.METRICS.value, ROUNDS)
    assert cached is not None and cached.vector is not None
    raw = final.decode(dequantize_sum(cached.vector, final.quantization(MAX_SITES)))
    assert women == pytest.approx(max(raw[1][0], 0.0), abs=0.5)
    assert men == pytest.approx(max(raw[2][0], 0.0), abs=0.5)
    # the levels split the held-out patients: within the noise of the three counts
    noise = plan.privacy.metrics_noise_multiplier * final.sensitivity / final.base.weights[0]
    assert abs(raw[1][0] + raw[2][0] - raw[0][0]) < 8 * noise
    assert np.isfinite(own[ROUNDS]["c_windowed"])
