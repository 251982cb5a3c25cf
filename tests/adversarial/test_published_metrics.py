"""A site's own published figures (policy.publish_own_metrics) against a cheating coordinator.

Real site agents (provisioned kits, SQLite ledgers, FLCHAIN hospitals), driven by the harness's
coordinator. What must hold:

- with the policy off (the default) no task can make a site publish: the result of every
  evaluation carries nothing but the acknowledgement, and the ledger holds no extra release,
  whatever round, attempt or unknown field the coordinator puts in the task;
- with it on, the site publishes at the final evaluation only, charges the release to its ledger
  before the noise is even drawn, and answers every later copy of the task (a retried attempt)
  with the very same vector: a coordinator cannot collect fresh draws to average;
- the published vector is an independent release, not the site's share of the sum: it differs
  from what the site's masked input encodes, so the coordinator cannot subtract it from a sum;
- in distributed mode the published release is a site-local Gaussian charged with all of its
  noise as the site's own, beside the Skellam share of the sum.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import site_agent.published_metrics as published_module
from federation.evaluation_release import EvaluationRelease
from federation.plan import RunPlan, parse_plan
from federation.releases import MetricsLayout, Purpose
from federation.wire.v1 import federation_pb2 as pb
from secagg.quantize import dequantize_sum
from site_agent.accounting import Entry, epsilon_of
from site_agent.agent import SiteAgent
from site_agent.published_metrics import PURPOSE
from tests.adversarial.harness import (
    CheatingCoordinator,
    Consortium,
    adversarial_plan,
    audit_actions,
    make_consortium,
)
from tests.unit.site_agent.test_handlers import local_task

pytestmark = [pytest.mark.integration, pytest.mark.adversarial]

A, B, C = "hospital-a", "hospital-b", "hospital-c"
ROUNDS = 2
_runs = itertools.count(1)


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    built = make_consortium(
        tmp_path_factory.mktemp("published") / "fed",
        (A, B, C),
        {"lifetime_epsilon": 10_000.0, "trusted_noise_sites": 3},
    )
    try:
        yield built
    finally:
        built.close()


@pytest.fixture(scope="module")
def plan() -> RunPlan:
    return adversarial_plan(quorum=3, rounds=ROUNDS)


def _publishing(monkeypatch: pytest.MonkeyPatch, agent: SiteAgent) -> None:
    """This site's policy with publish_own_metrics = true (for the test's duration)."""
    config = agent.handlers.config
    policy = config.policy.model_copy(update={"publish_own_metrics": True})
    monkeypatch.setattr(agent.handlers, "config", config.model_copy(update={"policy": policy}))


def _evil(consortium: Consortium, plan: RunPlan, sites: tuple[str, ...]) -> CheatingCoordinator:
    evil = CheatingCoordinator(consortium, plan, f"run-pub-{next(_runs)}")
    evil.offer(sites)
    return evil


def _evaluate(evil: CheatingCoordinator, round_: int = ROUNDS, attempt: int = 0) -> pb.Task:
    task = local_task(evil.plan, evil.run_id, pb.TASK_KIND_EVALUATE, round_)
    task.attempt = attempt
    return task


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _with_unknown_field(task: pb.Task, number: int, value: int) -> pb.Task:
    """The task with a field this build does not know (a coordinator's "please publish"), on
    the task and on its evaluate body: protobuf keeps such fields, the site must ignore them."""
    body = task.evaluate.SerializeToString() + _varint(number << 3) + _varint(value)
    tampered = pb.Task()
    tampered.CopyFrom(task)
    tampered.evaluate.ParseFromString(body)
    raw = tampered.SerializeToString() + _varint(number << 3) + _varint(value)
    return pb.Task.FromString(raw)


# ---------------------------------------------------------------------- the policy is the site's


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    round_=st.sampled_from([1, ROUNDS]),
    attempt=st.integers(0, 2),
    number=st.integers(16, 5000),
    value=st.integers(1, 2**20),
)
def test_no_task_makes_a_site_whose_policy_is_off_publish(
    consortium: Consortium, plan: RunPlan, round_: int, attempt: int, number: int, value: int
) -> None:
    agent = consortium.agents[A]
    assert agent.handlers.config.policy.publish_own_metrics is False  # the default
    evil = _evil(consortium, plan, (A,))
    task = _with_unknown_field(_evaluate(evil, round_, attempt), number, value)
    assert task.SerializeToString().endswith(_varint(number << 3) + _varint(value))
    result = evil.send(A, task)
    assert not result.HasField("error"), result.error.message
    assert not result.HasField("published_metrics")
    assert (
        result.SerializeToString()
        == pb.TaskResult(
            task_id=task.task_id, kind=task.kind, privacy=result.privacy
        ).SerializeToString()
    )  # nothing but the acknowledgement and the ε report leaves
    assert [r["purpose"] for r in agent.ledger.releases(evil.run_id)] == ["metrics"]
    published = [e for e in audit_actions(agent, "own_metrics_published")]
    assert not any(e["run_id"] == evil.run_id for e in published)


def test_a_publishing_site_charges_first_and_sends_the_same_release_on_every_retry(
    consortium: Consortium, plan: RunPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = consortium.agents[B]
    _publishing(monkeypatch, agent)
    evil = _evil(consortium, plan, (B,))
    # not at an earlier evaluation: only the final model's figures are published
    early = evil.send(B, _evaluate(evil, 1))
    assert not early.HasField("error") and not early.HasField("published_metrics")
    assert [r["purpose"] for r in agent.ledger.releases(evil.run_id)] == ["metrics"]

    evil = _evil(consortium, plan, (B,))
    draws: list[int] = []
    real_noise = published_module.gaussian_noise

    def noise_after_the_charge(size: int, std: float) -> np.ndarray:
        charged = [r for r in agent.ledger.releases(evil.run_id) if r["purpose"] == PURPOSE]
        assert len(charged) == 1, "the published release's noise was drawn before its charge"
        assert std == pytest.approx(charged[0]["noise_multiplier"] * MetricsLayout().sensitivity)
        draws.append(size)
        return real_noise(size, std)

    monkeypatch.setattr(published_module, "gaussian_noise", noise_after_the_charge)
    first = evil.send(B, _evaluate(evil))
    assert not first.HasField("error"), first.error.message
    assert first.HasField("published_metrics") and draws == [MetricsLayout().length]
    sent = first.published_metrics
    assert len(sent.weighted) == MetricsLayout().length
    rows = agent.ledger.releases(evil.run_id)
    assert [(r["purpose"], r["partition"]) for r in rows] == [
        ("metrics", "holdout"),
        (PURPOSE, "holdout"),
    ]
    assert rows[1]["noise_multiplier"] == sent.noise_multiplier
    assert rows[1]["mechanism"] == "gaussian" and rows[1]["own_noise_multiplier"] is None
    # the ε the site reports is what an independent accountant makes of the logged mechanisms,
    # within the plan's ε, and the held-out partition uses nearly all of it
    delta = plan.privacy.delta
    entries = [Entry(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in rows]
    independent = epsilon_of(entries, delta, plan.privacy.accountant)
    assert first.privacy.epsilon_spent_run == pytest.approx(independent, rel=1e-9)
    assert 0.99 * plan.privacy.epsilon <= independent <= plan.privacy.epsilon * (1 + 1e-9)
    charged = [
        e["purpose"] for e in audit_actions(agent, "release_charged") if e["run_id"] == evil.run_id
    ]
    assert charged == ["metrics", PURPOSE]
    # a retried attempt (the session died before masking) and a repeated task: the same vector
    for attempt in (1, 1, 2):
        again = evil.send(B, _evaluate(evil, attempt=attempt))
        assert not again.HasField("error"), again.error.message
        assert list(again.published_metrics.weighted) == list(sent.weighted)
        assert again.published_metrics.noise_multiplier == sent.noise_multiplier
    assert draws == [MetricsLayout().length]  # one draw, ever
    assert [r["purpose"] for r in agent.ledger.releases(evil.run_id)] == ["metrics", PURPOSE]


def test_the_published_release_is_not_the_sites_share_of_the_sum(
    consortium: Consortium, plan: RunPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    for site in (A, B, C):
        _publishing(monkeypatch, consortium.agents[site])
    evil = _evil(consortium, plan, (A, B, C))
    published: dict[str, np.ndarray] = {}
    for site in (A, B, C):
        result = evil.send(site, _evaluate(evil))
        assert not result.HasField("error"), result.error.message
        published[site] = np.asarray(result.published_metrics.weighted)
    release = EvaluationRelease.for_round(plan, ROUNDS)
    assert release.n_blocks > 1  # the masked input also carries the subgroup blocks

    def overall(quantised: np.ndarray, n: int) -> np.ndarray:
        decoded = dequantize_sum(quantised, release.quantization(n))
        return np.asarray(decoded).reshape(release.n_blocks, -1)[0]

    from federation.releases import MAX_SITES

    for site in (A, B, C):
        masked_block = overall(evil.release(site, Purpose.METRICS, ROUNDS), MAX_SITES)
        # two independent noises: the published vector is not the encoded input's block
        assert np.max(np.abs(published[site] - masked_block)) > 0.05, site
    session = evil.session(Purpose.METRICS, ROUNDS, 0, {1: A, 2: B, 3: C})
    session.run_honestly()
    total = session.recover_sum()
    assert total is not None
    summed = overall(total, 3)
    # the coordinator's best subtraction (the sum minus two sites' published figures) is not
    # the third site's release, nor is the sum of the published figures the sum
    true_a = overall(evil.release(A, Purpose.METRICS, ROUNDS), MAX_SITES)
    estimate = summed - published[B] - published[C]
    assert np.max(np.abs(estimate - true_a)) > 0.05
    assert np.max(np.abs(sum(published.values()) - summed)) > 0.05


def test_in_distributed_mode_the_published_release_is_charged_as_all_its_own_noise(
    consortium: Consortium, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedctl.demo import plan_text

    text = plan_text(ROUNDS, local_epochs=1).replace("quorum = 2 ", "quorum = 3 ")
    text = text.replace("[training]\n", '[training]\nmode = "distributed"\nsample_rate = 1.0\n')
    plan = parse_plan(text.replace("[privacy]\n", "[privacy]\nnoise_shares = 3\n"))
    agent = consortium.agents[C]
    _publishing(monkeypatch, agent)
    evil = _evil(consortium, plan, (C,))
    result = evil.send(C, _evaluate(evil))
    assert not result.HasField("error"), result.error.message
    assert result.HasField("published_metrics")
    rows = agent.ledger.releases(evil.run_id)
    share, own = rows
    assert (share["purpose"], share["mechanism"]) == ("metrics", "skellam")
    assert share["own_noise_multiplier"] < share["noise_multiplier"]  # a third of the noise
    assert (own["purpose"], own["mechanism"], own["own_noise_multiplier"]) == (
        PURPOSE,
        "gaussian",
        None,
    )
    assert own["noise_multiplier"] == result.published_metrics.noise_multiplier
    delta = plan.privacy.delta
    for view, column in (("assumed", "noise_multiplier"), ("own", "own_noise_multiplier")):
        entries = [
            Entry(
                float(r[column] if r[column] is not None else r["noise_multiplier"]),
                r["sample_rate"],
                r["steps"],
                mechanism=r["mechanism"],
                l2_sensitivity=r["l2_sensitivity"],
                l1_sensitivity=r["l1_sensitivity"],
            )
            for r in rows
        ]
        independent = epsilon_of(entries, delta, "rdp")  # a Skellam history: RDP for all
        assert math.isclose(
            agent.ledger.epsilon_run(evil.run_id, delta, view), independent, rel_tol=1e-9
        )
    assert agent.ledger.epsilon_run(evil.run_id, delta) <= plan.privacy.epsilon * (1 + 1e-9)
