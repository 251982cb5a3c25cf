"""Distributed mode against a cheating coordinator: the site's trust assumption h is its own.

Real site agents (provisioned kits, SQLite ledgers, FLCHAIN hospitals) in distributed mode, where
each site adds only a *share* of the noise a sum needs. Full-batch rounds (q = 1) make each site's
noiseless gradient sum deterministic, so a control can measure the noise variance in what the
coordinator learns and show that, without the site's rule, it is below the target the site's ε
assumes. Also: both ε views in the ledger (recomputed independently), the partition of a site
that holds nothing out, and the weight a site puts in a weighted-FedAvg release.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest

from federation.plan import RunPlan, parse_plan
from federation.releases import Purpose, StatsLayout, UpdateLayout
from federation.wire.v1 import federation_pb2 as pb
from secagg.quantize import dequantize_sum
from site_agent import sessions as site_sessions
from site_agent.accounting import Entry, epsilon_of
from site_agent.distributed import DistributedTraining
from tests.adversarial.harness import (
    CheatingCoordinator,
    Consortium,
    Session,
    audit_actions,
    make_consortium,
)

pytestmark = [pytest.mark.integration, pytest.mark.adversarial]

A, B, C, D, E = "hospital-a", "hospital-b", "hospital-c", "hospital-d", "hospital-e"
FIVE = (A, B, C, D, E)


def plan_text(*, mode: str = "distributed", shares: int = 5, extra: str = "") -> str:
    from fedctl.demo import plan_text as demo_plan

    text = demo_plan(3, local_epochs=1).replace("quorum = 2 ", "quorum = 3 ")
    if mode == "distributed":  # an MLP: ~1 000 coordinates to measure the noise variance on
        text = text.replace('kind = "linear"', 'kind = "mlp"')
    training = f'[training]\nmode = "{mode}"\nsample_rate = 1.0\n{extra}'
    text = text.replace("[training]\n", training)
    return text.replace("[privacy]\n", f"[privacy]\nnoise_shares = {shares}\n")


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    built = make_consortium(
        tmp_path_factory.mktemp("dist") / "fed",
        FIVE,
        {"lifetime_epsilon": 1000.0, "trusted_noise_sites": 5},
    )
    try:
        yield built
    finally:
        built.close()


_runs = iter(range(1000))


def _evil(consortium: Consortium, plan: RunPlan, sites: tuple[str, ...]) -> CheatingCoordinator:
    evil = CheatingCoordinator(consortium, plan, f"run-dist-{next(_runs)}")
    evil.offer(sites)
    return evil


def _train(evil: CheatingCoordinator, sites: tuple[str, ...]) -> None:
    evil.prepare(sites, Purpose.UPDATE, 1, 0)


def _noise_variance(evil: CheatingCoordinator, session: Session, sites: tuple[str, ...]) -> float:
    """Per-coordinate variance (integer units) of the noise in the sum the coordinator learned:
    the recovered sum minus the sites' noiseless integer gradient sums (deterministic at q = 1)."""
    total = session.recover_sum()
    assert total is not None
    noiseless = np.zeros(total.size, dtype=np.int64)
    for site in sites:
        training = evil.c.agents[site].handlers.runs[evil.run_id].training
        assert isinstance(training, DistributedTraining)
        schema = evil.plan.feature_schema
        gradient = training.gradient_sum(
            _start(evil.plan),
            [0.0] * schema.n_encoded,
            [1.0] * schema.n_encoded,
            np.random.default_rng(0),  # q = 1: every row, whatever the generator
        )
        noiseless += training.encoding.encode(gradient)
    noise = total.view(np.int32).astype(np.int64) - noiseless
    return float(np.var(noise.astype(np.float64)))


def _start(plan: RunPlan) -> np.ndarray:
    from survival.spec import initial_parameters

    schema = plan.feature_schema
    return initial_parameters(plan.model, schema.n_encoded, plan.time_grid.n_intervals, 0).astype(
        np.float32
    )


def _target_and_share(evil: CheatingCoordinator) -> tuple[float, float]:
    training = evil.c.agents[A].handlers.runs[evil.run_id].training
    assert isinstance(training, DistributedTraining)
    target = (training.noise_multiplier * training.share.l2_sensitivity) ** 2
    return target, training.share.share_variance


# ---------------------------------------------------------------------- fewer than h participants
def test_a_session_below_trusted_noise_sites_is_refused(consortium: Consortium) -> None:
    evil = _evil(consortium, parse_plan(plan_text()), FIVE)
    _train(evil, (A, B, C))
    session = evil.session(Purpose.UPDATE, 1, 0, {1: A, 2: B, 3: C})
    session.run_honestly()
    for site in (A, B, C):
        assert any("below policy.trusted_noise_sites 5" in m for m in session.refusals[site])
    refused = audit_actions(consortium.agents[A], "secagg_refused")
    assert any("trusted_noise_sites" in str(e["reason"]) for e in refused)
    assert not session.masked  # nothing was masked, so there is no sum to open


def test_control_without_the_floor_the_sum_carries_too_little_noise(
    consortium: Consortium, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(site_sessions, "noise_floor", lambda plan, policy: 1)
    evil = _evil(consortium, parse_plan(plan_text()), FIVE)
    _train(evil, (A, B, C))
    session = evil.session(Purpose.UPDATE, 1, 0, {1: A, 2: B, 3: C})
    session.run_honestly()
    assert not session.refusals
    target, share = _target_and_share(evil)
    assert share == pytest.approx(target / 5)
    variance = _noise_variance(evil, session, (A, B, C))
    # three shares of a fifth each: 0.6 of the target the site's ε assumes (d ≈ 1000 coordinates)
    assert variance < 0.8 * target
    assert variance == pytest.approx(3 * share, rel=0.2)


# ---------------------------------------------------------------------- fewer than h survivors
def test_an_unmask_below_trusted_noise_sites_is_refused(consortium: Consortium) -> None:
    evil = _evil(consortium, parse_plan(plan_text()), FIVE)
    _train(evil, FIVE)
    session = evil.session(Purpose.UPDATE, 1, 0, dict(enumerate(FIVE, start=1)))
    session.advertise()
    session.share_keys()
    survivors = [1, 2, 3, 4]  # hospital-e drops before its masked input (and noise share)
    session.masked_input(to=survivors)
    session.consistency({u: survivors for u in survivors})
    session.unmask({u: (survivors, [5]) for u in survivors})
    for site in (A, B, C, D):
        assert any("4 survivors are below" in m for m in session.refusals[site])
    assert not session.responses  # no share was revealed: the sum cannot be opened


def test_control_unmasking_without_the_rule_opens_a_sum_short_of_noise(
    consortium: Consortium, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(site_sessions, "check_survivors", lambda plan, policy, n: None)
    from site_agent import secagg_adapter

    monkeypatch.setattr(secagg_adapter, "check_survivors", lambda plan, policy, n: None)
    evil = _evil(consortium, parse_plan(plan_text()), FIVE)
    _train(evil, FIVE)
    session = evil.session(Purpose.UPDATE, 1, 0, dict(enumerate(FIVE, start=1)))
    session.advertise()
    session.share_keys()
    survivors = [1, 2, 3, 4]
    session.masked_input(to=survivors)
    session.consistency({u: survivors for u in survivors})
    session.unmask({u: (survivors, [5]) for u in survivors})
    assert not session.refusals
    target, share = _target_and_share(evil)
    variance = _noise_variance(evil, session, (A, B, C, D))
    assert variance == pytest.approx(4 * share, rel=0.15)
    assert variance < 0.9 * target


# ---------------------------------------------------------------------- the two ε views
def test_a_distributed_release_is_charged_in_both_views(consortium: Consortium) -> None:
    evil = _evil(consortium, parse_plan(plan_text()), FIVE)
    evil.prepare((A,), Purpose.STATS, 0, 0)
    _train(evil, (A,))
    ledger = consortium.agents[A].ledger
    rows = ledger.releases(evil.run_id)
    assert [r["purpose"] for r in rows] == ["stats", "update"]
    for row in rows:
        assert row["mechanism"] == "skellam"
        assert row["own_noise_multiplier"] < row["noise_multiplier"]  # h = 5: a fifth each
        assert row["epsilon_run_own"] > row["epsilon_run"]

    def entries(column: str) -> list[Entry]:
        return [
            Entry(
                r[column],
                r["sample_rate"],
                r["steps"],
                mechanism="skellam",
                l2_sensitivity=r["l2_sensitivity"],
                l1_sensitivity=r["l1_sensitivity"],
            )
            for r in rows
        ]

    delta = evil.plan.privacy.delta
    assumed = epsilon_of(entries("noise_multiplier"), delta, "rdp")
    own = epsilon_of(entries("own_noise_multiplier"), delta, "rdp")
    assert math.isclose(ledger.epsilon_run(evil.run_id, delta), assumed, rel_tol=1e-6)
    assert math.isclose(ledger.epsilon_run(evil.run_id, delta, view="own"), own, rel_tol=1e-6)
    assert assumed <= evil.plan.privacy.epsilon
    charged = audit_actions(consortium.agents[A], "release_charged")[-1]
    assert charged["trusted_noise_sites"] == 5
    assert math.isclose(float(charged["epsilon_run_own"]), own, rel_tol=1e-6)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- hold-out and weights
def test_a_site_below_the_holdout_floor_trains_on_all_rows_and_skips_evaluation(
    consortium: Consortium,
) -> None:
    plan = parse_plan(plan_text(mode="local", extra="holdout_min_site_rows = 1000000\n"))
    evil = _evil(consortium, plan, (A,))
    evil.prepare((A,), Purpose.UPDATE, 1, 0)
    agent = consortium.agents[A]
    assert {r["partition"] for r in agent.ledger.releases(evil.run_id)} == {"both"}
    task = evil.task(pb.TASK_KIND_EVALUATE, 1)
    result = evil.send(A, task)
    assert result.error.code == pb.TASK_ERROR_NO_HOLDOUT
    data = agent.handlers.runs[evil.run_id].data
    training = agent.handlers.runs[evil.run_id].training
    assert training is not None and training.trainer.n_samples == data.n_valid  # type: ignore[union-attr]


def test_a_weighted_release_carries_the_sites_own_noised_count(consortium: Consortium) -> None:
    plan = parse_plan(plan_text(mode="local"))
    evil = _evil(consortium, plan, (B,))
    evil.prepare((B,), Purpose.UPDATE, 1, 0)  # statistics first, then one round
    agent = consortium.agents[B]
    stats = evil.release(B, Purpose.STATS, 0)
    layout = StatsLayout.for_schema(plan.feature_schema, plan.time_grid.n_intervals)
    own_count = float(dequantize_sum(stats, layout.quantization(64))[0])
    update = evil.release(B, Purpose.UPDATE, 1)
    n_params = update.size - 1
    s = plan.secagg
    weighted = UpdateLayout(n_params, s.clip_norm, s.coord_bound, s.scale_bits, True)
    weight = float(dequantize_sum(update, weighted.quantization(64))[-1])
    # the harness's coordinator says the consortium holds 1000 patients
    assert weight == pytest.approx(min(own_count / 1000.0, 1.0), abs=1e-4)
    assert agent.handlers.runs[evil.run_id].plan.training.aggregation == "weighted"
