"""The task handlers of a real site agent (provisioned kit, SQLite state, FLCHAIN rows, Opacus):
every wire field is checked against the accepted plan, a refusal is an audited INVALID_TASK and
releases nothing, σ is calibrated once per run, and the fault hooks come in as one object."""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import site_agent.train as train_module
from federation.faults import Faults
from federation.plan import RunPlan
from federation.releases import Purpose
from federation.vectors import encode_vector, vector_sha256
from federation.wire.v1 import federation_pb2 as pb
from site_agent.accounting import Entry
from site_agent.agent import POLL_WAIT_MS, SiteAgent, long_poll_wait_ms
from survival.spec import initial_parameters
from tests.adversarial.harness import Consortium, adversarial_plan, audit_actions, make_consortium

pytestmark = pytest.mark.unit

SITE = "hospital-a"
_runs = itertools.count(1)


def three_hospitals(factory: pytest.TempPathFactory, name: str) -> Iterator[Consortium]:
    """Real agents for hospitals a, b, c with a budget no test here exhausts (module fixtures)."""
    workdir: Path = factory.mktemp(name) / "fed"
    built = make_consortium(
        workdir, ("hospital-a", "hospital-b", "hospital-c"), {"lifetime_epsilon": 10_000.0}
    )
    try:
        yield built
    finally:
        built.close()


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    yield from three_hospitals(tmp_path_factory, "handlers")


@pytest.fixture(scope="module")
def plan() -> RunPlan:
    return adversarial_plan(quorum=3, rounds=3)


@pytest.fixture
def agent(consortium: Consortium) -> SiteAgent:
    return consortium.agents[SITE]


@pytest.fixture
def run_id(agent: SiteAgent, plan: RunPlan) -> str:
    """A fresh run whose plan this site accepted."""
    run = f"run-{next(_runs)}"
    result = agent.handle(offer(run, plan))
    assert not result.HasField("error"), result.error.message
    return run


def task(run_id: str, kind: int, round_: int = 0, attempt: int = 0) -> pb.Task:
    return pb.Task(
        task_id=f"t-{next(_runs)}", run_id=run_id, round=round_, attempt=attempt, kind=kind
    )


def offer(run_id: str, plan: RunPlan, sha256: str | None = None) -> pb.Task:
    message = task(run_id, pb.TASK_KIND_PLAN_OFFER)
    text = plan.canonical_json()
    message.plan_offer.plan_json = text
    message.plan_offer.plan_sha256 = (
        hashlib.sha256(text.encode()).hexdigest() if sha256 is None else sha256
    )
    return message


def start_vector(plan: RunPlan) -> np.ndarray:
    schema = plan.feature_schema
    return initial_parameters(plan.model, schema.n_encoded, plan.time_grid.n_intervals, 0)


def local_task(plan: RunPlan, run_id: str, kind: int, round_: int = 1) -> pb.Task:
    """A Train or Evaluate task as an honest coordinator builds it."""
    message = task(run_id, kind, round_)
    body = message.train if kind == pb.TASK_KIND_TRAIN else message.evaluate
    body.global_vector.CopyFrom(encode_vector(start_vector(plan)))
    schema = plan.feature_schema
    body.standardisation.features.extend(schema.encoded_names())
    body.standardisation.mean.extend([0.0] * schema.n_encoded)
    body.standardisation.scale.extend([1.0] * schema.n_encoded)
    if kind == pb.TASK_KIND_TRAIN:
        message.train.consortium_count = 5000.0
    if kind == pb.TASK_KIND_EVALUATE:
        n = plan.time_grid.n_intervals
        message.evaluate.events.extend([10.0] * n)
        message.evaluate.at_risk.extend([float(1000 - 50 * k) for k in range(n)])
    return message


def stats_task(run_id: str, spec: str) -> pb.Task:
    message = task(run_id, pb.TASK_KIND_FEDERATED_STATS)
    message.federated_stats.spec_json = spec
    return message


def assert_refused(agent: SiteAgent, run_id: str, result: pb.TaskResult, needle: str) -> None:
    """An INVALID_TASK refusal naming the cause, audited, and nothing charged or cached."""
    assert result.HasField("error")
    assert result.error.code == pb.TASK_ERROR_INVALID_TASK, result.error.message
    assert needle in result.error.message, result.error.message
    refused = [e for e in audit_actions(agent, "task_refused") if e["run_id"] == run_id]
    assert refused and refused[-1]["reason"] == result.error.message
    assert agent.ledger.releases(run_id) == []
    for purpose in Purpose:
        for round_ in range(4):
            assert agent.cache.get(run_id, purpose.value, round_) is None


# ---------------------------------------------------------------------- plan offer


def test_a_plan_offer_whose_text_does_not_match_its_hash_is_refused(
    agent: SiteAgent, plan: RunPlan
) -> None:
    run = f"run-{next(_runs)}"
    result = agent.handle(offer(run, plan, sha256="0" * 64))
    assert_refused(agent, run, result, "plan_sha256")
    assert not (Path(agent.config.state_dir) / "plans" / f"{run}.json").exists()
    assert not [e for e in audit_actions(agent, "plan_accepted") if e["run_id"] == run]
    # The text the site pins is the one it was sent: with the matching hash it is accepted.
    accepted = agent.handle(offer(run, plan))
    assert not accepted.HasField("error"), accepted.error.message
    # And an offer without a hash is checked against nothing but the policy (as before).
    assert not agent.handle(offer(f"run-{next(_runs)}", plan, sha256="")).HasField("error")


def test_a_plan_outside_the_policy_is_refused_with_every_reason(
    agent: SiteAgent, plan: RunPlan
) -> None:
    greedy = plan.model_copy(update={"privacy": plan.privacy.model_copy(update={"epsilon": 50.0})})
    run = f"run-{next(_runs)}"
    result = agent.handle(offer(run, RunPlan.model_validate(greedy.model_dump())))
    assert result.error.code == pb.TASK_ERROR_POLICY_REFUSED
    assert "policy.max_epsilon_per_run" in result.error.message
    refused = [e for e in audit_actions(agent, "task_refused") if e["run_id"] == run]
    assert refused[-1]["reason"] == result.error.message
    assert refused[-1]["kind"] == "TASK_KIND_PLAN_OFFER"  # the audit's spelling, unchanged
    assert not (Path(agent.config.state_dir) / "plans" / f"{run}.json").exists()


# ---------------------------------------------------------------------- global vector


Mutation = Callable[[pb.GlobalVector], None]


def _truncate(v: pb.GlobalVector) -> None:
    v.float32_le = v.float32_le[:-4]
    v.length -= 1
    v.sha256 = hashlib.sha256(v.float32_le).hexdigest()


def _lengthen(v: pb.GlobalVector) -> None:
    v.float32_le += np.zeros(1, "<f4").tobytes()
    v.length += 1
    v.sha256 = ""


def _alter(v: pb.GlobalVector) -> None:
    data = bytearray(v.float32_le)
    data[0] ^= 1
    v.float32_le = bytes(data)


def _nan(v: pb.GlobalVector) -> None:
    v.float32_le = np.full(v.length, np.nan, "<f4").tobytes()
    v.sha256 = hashlib.sha256(v.float32_le).hexdigest()


def _mislabel(v: pb.GlobalVector) -> None:
    v.length += 1


VECTOR_ATTACKS: list[tuple[Mutation, str]] = [
    (_truncate, "are expected here"),
    (_lengthen, "are expected here"),
    (_alter, "SHA-256"),
    (_nan, "NaN or infinity"),
    (_mislabel, "does not hold its stated"),
]


@pytest.mark.parametrize("kind", [pb.TASK_KIND_TRAIN, pb.TASK_KIND_EVALUATE])
@pytest.mark.parametrize(("mutate", "needle"), VECTOR_ATTACKS)
def test_a_bad_global_vector_is_refused_before_anything_is_charged(
    agent: SiteAgent, plan: RunPlan, run_id: str, kind: int, mutate: Mutation, needle: str
) -> None:
    message = local_task(plan, run_id, kind)
    body = message.train if kind == pb.TASK_KIND_TRAIN else message.evaluate
    mutate(body.global_vector)
    assert_refused(agent, run_id, agent.handle(message), needle)


def test_the_accepted_global_vectors_hash_is_logged(
    agent: SiteAgent, plan: RunPlan, run_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="concordia.site"):
        result = agent.handle(local_task(plan, run_id, pb.TASK_KIND_EVALUATE))
    assert not result.HasField("error"), result.error.message
    assert vector_sha256(start_vector(plan)) in caplog.text
    assert agent.cache.get(run_id, Purpose.METRICS.value, 1) is not None


# ---------------------------------------------------------------------- standardisation


def _reorder(s: pb.Standardisation) -> None:
    names = list(s.features)
    del s.features[:]
    s.features.extend([names[1], names[0], *names[2:]])


def _rename(s: pb.Standardisation) -> None:
    s.features[0] = "weight"


def _drop_features(s: pb.Standardisation) -> None:
    del s.features[:]


def _short_mean(s: pb.Standardisation) -> None:
    del s.mean[-1]


def _long_scale(s: pb.Standardisation) -> None:
    s.scale.append(1.0)


def _zero_scale(s: pb.Standardisation) -> None:
    s.scale[0] = 0.0


def _infinite_mean(s: pb.Standardisation) -> None:
    s.mean[0] = float("inf")


STANDARDISATION_ATTACKS = [
    (_reorder, "order included"),
    (_rename, "are not the accepted plan's encoded features"),
    (_drop_features, "are not the accepted plan's encoded features"),
    (_short_mean, "mean values for the plan's"),
    (_long_scale, "scale values for the plan's"),
    (_zero_scale, "not positive"),
    (_infinite_mean, "not finite"),
]


@pytest.mark.parametrize("kind", [pb.TASK_KIND_TRAIN, pb.TASK_KIND_EVALUATE])
@pytest.mark.parametrize(("mutate", "needle"), STANDARDISATION_ATTACKS)
def test_a_standardisation_for_other_features_is_refused(
    agent: SiteAgent,
    plan: RunPlan,
    run_id: str,
    kind: int,
    mutate: Callable[[pb.Standardisation], None],
    needle: str,
) -> None:
    message = local_task(plan, run_id, kind)
    body = message.train if kind == pb.TASK_KIND_TRAIN else message.evaluate
    mutate(body.standardisation)
    assert_refused(agent, run_id, agent.handle(message), needle)


def test_evaluate_counts_must_cover_the_plans_intervals(
    agent: SiteAgent, plan: RunPlan, run_id: str
) -> None:
    message = local_task(plan, run_id, pb.TASK_KIND_EVALUATE)
    del message.evaluate.at_risk[-1]
    assert_refused(agent, run_id, agent.handle(message), "at_risk counts")


# ---------------------------------------------------------------------- statistics spec


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ('{"plan_sha256": "' + "ab" * 32 + '"}', "this site accepted plan"),
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_a_statistics_task_for_another_plan_is_refused(
    agent: SiteAgent, run_id: str, spec: str, needle: str
) -> None:
    assert_refused(agent, run_id, agent.handle(stats_task(run_id, spec)), needle)


@pytest.mark.parametrize("spec", ["", "{}", "MATCHING"])
def test_a_statistics_task_for_the_accepted_plan_is_answered(
    agent: SiteAgent, plan: RunPlan, run_id: str, spec: str
) -> None:
    if spec == "MATCHING":
        spec = '{"plan_sha256": "' + plan.sha256() + '"}'
    result = agent.handle(stats_task(run_id, spec))
    assert not result.HasField("error"), result.error.message
    assert [r["purpose"] for r in agent.ledger.releases(run_id)] == ["stats"]


# ---------------------------------------------------------------------- σ once per run


def test_sigma_is_calibrated_once_per_run_across_rounds(
    agent: SiteAgent, plan: RunPlan, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = train_module.calibrate_noise_multiplier

    def counting(*args: Any, **kwargs: Any) -> float:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "calibrate_noise_multiplier", counting)
    assert not agent.handle(stats_task(run_id, "")).HasField("error")
    for round_ in range(1, plan.training.rounds + 1):
        result = agent.handle(local_task(plan, run_id, pb.TASK_KIND_TRAIN, round_))
        assert not result.HasField("error"), result.error.message
    assert len(calls) == 1
    charged = [r for r in agent.ledger.releases(run_id) if r["purpose"] == "update"]
    assert len(charged) == plan.training.rounds
    assert len({(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in charged}) == 1
    # The charged σ is a fresh calibration over the same inputs (the statistics release as prior).
    training = agent.handlers.runs[run_id].training
    assert training is not None
    stats = [r for r in agent.ledger.releases(run_id) if r["purpose"] == "stats"]
    prior = [Entry(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in stats]
    fresh = real(
        plan.privacy.epsilon,
        plan.privacy.delta,
        charged[0]["sample_rate"],
        training.trainer.plan_steps,
        plan.privacy.accountant,
        prior=prior,
    )
    assert charged[0]["noise_multiplier"] == fresh


def test_a_restarted_agent_calibrates_the_same_sigma(
    consortium: Consortium, agent: SiteAgent, plan: RunPlan, run_id: str
) -> None:
    assert not agent.handle(stats_task(run_id, "")).HasField("error")
    assert not agent.handle(local_task(plan, run_id, pb.TASK_KIND_TRAIN, 1)).HasField("error")
    restarted = SiteAgent(agent.config)  # same state_dir: plan, ledger and cache from disk
    try:
        result = restarted.handle(local_task(plan, run_id, pb.TASK_KIND_TRAIN, 2))
        assert not result.HasField("error"), result.error.message
    finally:
        for part in (restarted.ledger, restarted.cache, restarted.sessions, restarted.audit):
            part.close()
    sigmas = {
        r["noise_multiplier"] for r in agent.ledger.releases(run_id) if r["purpose"] == "update"
    }
    assert len(sigmas) == 1


# ---------------------------------------------------------------------- faults and long-poll


@dataclass(frozen=True)
class RecordingFaults(Faults):
    """Faults that note every crash point asked about instead of killing the process."""

    asked: list[tuple[str, str | None, int]] = field(default_factory=list)

    def crash_if_asked(self, kind: str, purpose: str | None, round_: int) -> None:
        self.asked.append((kind, purpose, round_))


def test_faults_are_one_injected_object(
    agent: SiteAgent, plan: RunPlan, run_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults = RecordingFaults(record_dir=tmp_path)
    monkeypatch.setattr(agent.handlers, "faults", faults)
    assert not agent.handle(stats_task(run_id, "")).HasField("error")  # weighted FedAvg's count
    assert not agent.handle(local_task(plan, run_id, pb.TASK_KIND_TRAIN, 2)).HasField("error")
    unmask = task(run_id, pb.TASK_KIND_SECAGG_UNMASK, 2)
    unmask.secagg.purpose = pb.SECAGG_PURPOSE_MODEL_UPDATE
    agent.handle(unmask)  # refused (no such session here); the crash point is asked first
    assert faults.asked == [
        ("federated_stats", None, 0),
        ("train", None, 2),
        ("secagg_unmask", "update", 2),
    ]
    recorded = np.load(tmp_path / f"{SITE}-{run_id}-r2.npy")  # the name tests/e2e reads
    cached = agent.cache.get(run_id, Purpose.UPDATE.value, 2)
    assert cached is not None and cached.vector is not None
    np.testing.assert_array_equal(recorded, cached.vector)


def test_by_default_nothing_is_recorded(agent: SiteAgent) -> None:
    assert agent.handlers.faults == Faults()


def test_the_coordinators_poll_wait_only_lowers_the_sites() -> None:
    assert long_poll_wait_ms(0) == POLL_WAIT_MS  # none suggested
    assert long_poll_wait_ms(5_000) == 5_000
    assert long_poll_wait_ms(25_000) == POLL_WAIT_MS
