"""The site's publishing policy (off by default, on only by its own config) and the σ of its
published release (site_agent/published_metrics.py): calibrated from the ledger's own history,
the accepted plan and the site's policy, so that the held-out partition's composed ε stays within
the run's ε — and uses nearly all of the room (not a vacuous bound) — and within the lifetime
limit when that binds; refused when there is no room; recomputable from the logged mechanisms
like every other row."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation.plan import RunPlan, parse_plan
from site_agent.accounting import AccountantKind, Entry, epsilon_of
from site_agent.config import SitePolicy
from site_agent.ledger import PrivacyLedger
from site_agent.published_metrics import (
    PURPOSE,
    NotPublishable,
    publish_noise_multiplier,
)

pytestmark = pytest.mark.unit

PLAN = """
name = "published"
quorum = 3
[[features]]
kind = "numeric"
name = "age"
min = 40
max = 110
[time_grid]
cuts = [1000.0, 2000.0]
[training]
rounds = {rounds}
evaluate_every = {every}
[privacy]
epsilon = {epsilon}
accountant = "{accountant}"
metrics_epsilon_share = {share}
"""
_ids = itertools.count()


def _plan(
    epsilon: float, share: float = 0.7, accountant: str = "pld", rounds: int = 4, every: int = 0
) -> RunPlan:
    return parse_plan(
        PLAN.format(epsilon=epsilon, share=share, accountant=accountant, rounds=rounds, every=every)
    )


def _ledger(tmp_path: Path) -> PrivacyLedger:
    return PrivacyLedger(tmp_path / f"ledger-{next(_ids)}.sqlite", clock=lambda: 0.0)


def _charge(
    ledger: PrivacyLedger,
    plan: RunPlan,
    run_id: str,
    purpose: str,
    sigma: float,
    policy: SitePolicy,
    partition: str = "holdout",
) -> float:
    cap = min(plan.privacy.epsilon, policy.max_epsilon_per_run)
    charge = ledger.charge(
        run_id=run_id,
        purpose=purpose,
        round=plan.training.rounds,
        attempt=0,
        partition=partition,  # type: ignore[arg-type]
        noise_multiplier=sigma,
        sample_rate=1.0,
        steps=1,
        delta=plan.privacy.delta,
        run_epsilon_cap=cap,
        lifetime_epsilon_cap=policy.lifetime_epsilon,
        accountant=plan.privacy.accountant,
    )
    return charge.epsilon_run


def _evaluations(ledger: PrivacyLedger, plan: RunPlan, run_id: str, policy: SitePolicy) -> None:
    """The run's consortium evaluations, as the plan calibrated them, and a training release."""
    rounds, every = plan.training.rounds, plan.training.evaluate_every
    k = 1 if every <= 0 else rounds // every + (1 if rounds % every else 0)
    _charge(ledger, plan, run_id, "stats", 50.0, policy, "train")
    for _ in range(k):
        _charge(ledger, plan, run_id, "metrics", plan.privacy.metrics_noise_multiplier, policy)


def _holdout_epsilon(ledger: PrivacyLedger, plan: RunPlan, run_id: str) -> float:
    entries = ledger.history(run_id, "holdout")
    return epsilon_of(entries, plan.privacy.delta, plan.privacy.accountant)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    epsilon=st.floats(0.5, 8.0),
    share=st.floats(0.3, 0.9),
    every=st.sampled_from([0, 1, 2]),
)
def test_the_held_out_charge_stays_within_the_run_and_uses_its_room(
    tmp_path: Path, epsilon: float, share: float, every: int
) -> None:
    plan = _plan(epsilon, share, "rdp", rounds=4, every=every)
    policy = SitePolicy(max_epsilon_per_run=8.0, lifetime_epsilon=1000.0)
    ledger = _ledger(tmp_path)
    _evaluations(ledger, plan, "run-1", policy)
    before = _holdout_epsilon(ledger, plan, "run-1")
    assert before < epsilon
    sigma = publish_noise_multiplier(ledger, "run-1", plan, policy)
    reported = _charge(ledger, plan, "run-1", PURPOSE, sigma, policy)  # the ledger accepts it
    after = _holdout_epsilon(ledger, plan, "run-1")
    assert after <= epsilon * (1 + 1e-9)
    assert after >= 0.99 * epsilon  # nearly all the room the evaluations left is used
    assert reported == pytest.approx(max(after, _train(ledger, plan)), rel=1e-9)


def _train(ledger: PrivacyLedger, plan: RunPlan) -> float:
    return epsilon_of(ledger.history("run-1", "train"), plan.privacy.delta, "rdp")


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_the_default_plan_publishes_in_the_room_its_evaluation_leaves(
    tmp_path: Path, accountant: AccountantKind
) -> None:
    plan = _plan(3.0, accountant=accountant)
    policy = SitePolicy()
    ledger = _ledger(tmp_path)
    _evaluations(ledger, plan, "run-1", policy)
    sigma = publish_noise_multiplier(ledger, "run-1", plan, policy)
    _charge(ledger, plan, "run-1", PURPOSE, sigma, policy)
    after = _holdout_epsilon(ledger, plan, "run-1")
    assert 0.99 * 3.0 <= after <= 3.0 * (1 + 1e-9)
    # the ε the site reports is an independent recomputation from the logged mechanisms
    rows = ledger.releases("run-1")
    holdout = [Entry(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in rows[1:]]
    assert rows[-1]["purpose"] == PURPOSE and rows[-1]["partition"] == "holdout"
    assert ledger.epsilon_run("run-1", plan.privacy.delta) == pytest.approx(
        epsilon_of(holdout, plan.privacy.delta, accountant), rel=1e-9
    )
    # a release at a σ 2 % smaller would not fit: the calibration is tight, not just safe
    smaller = epsilon_of(
        [*holdout[:-1], Entry(0.98 * sigma, 1.0, 1)], plan.privacy.delta, accountant
    )
    assert smaller > 3.0


def test_the_lifetime_limit_raises_sigma_when_it_binds(tmp_path: Path) -> None:
    plan = _plan(3.0, accountant="rdp")
    policy = SitePolicy(max_epsilon_per_run=3.0, lifetime_epsilon=3.5)
    ledger = _ledger(tmp_path)
    _evaluations(ledger, plan, "run-0", policy)  # an earlier run's held-out releases
    _evaluations(ledger, plan, "run-1", policy)
    run_only = publish_noise_multiplier(ledger, "run-1", plan, SitePolicy(lifetime_epsilon=1000.0))
    sigma = publish_noise_multiplier(ledger, "run-1", plan, policy)
    assert sigma > run_only
    _charge(ledger, plan, "run-1", PURPOSE, sigma, policy)  # within the lifetime cap
    lifetime = epsilon_of(ledger.history(None, "holdout"), plan.privacy.delta, "rdp")
    assert 0.99 * 3.5 <= lifetime <= 3.5 * (1 + 1e-9)


def test_no_room_left_is_refused_naming_the_limit(tmp_path: Path) -> None:
    plan = _plan(3.0, accountant="rdp")
    policy = SitePolicy()
    ledger = _ledger(tmp_path)
    ledger.charge(  # an evaluation that spent more than the run's ε (another site's policy)
        run_id="run-1",
        purpose="metrics",
        round=4,
        attempt=0,
        partition="holdout",
        noise_multiplier=0.5,
        sample_rate=1.0,
        steps=1,
        delta=plan.privacy.delta,
        run_epsilon_cap=1e4,
        lifetime_epsilon_cap=1e4,
    )
    with pytest.raises(NotPublishable, match="no room left under the run ε limit 3"):
        publish_noise_multiplier(ledger, "run-1", plan, policy)


def test_a_worst_case_budget_calibrates_in_the_sites_own_view(tmp_path: Path) -> None:
    """Distributed mode: the run's held-out history holds a Skellam share whose own noise is half
    the sum's variance; under `budget_epsilon = "worst_case"` the room is the own view's, and
    the published release (site-local Gaussian) counts with all of its noise in both views."""
    plan = _plan(3.0, accountant="rdp")
    ledger = _ledger(tmp_path)
    charge_args = {
        "run_id": "run-1",
        "purpose": "metrics",
        "round": 4,
        "attempt": 0,
        "partition": "holdout",
        "noise_multiplier": 3.0,
        "sample_rate": 1.0,
        "steps": 1,
        "delta": plan.privacy.delta,
        "run_epsilon_cap": 100.0,
        "lifetime_epsilon_cap": 1000.0,
        "mechanism": "skellam",
        "l2_sensitivity": 64.0,
        "l1_sensitivity": 400.0,
        "own_noise_multiplier": 3.0 / 2**0.5,
    }
    ledger.charge(**charge_args)  # type: ignore[arg-type]
    assumed = publish_noise_multiplier(ledger, "run-1", plan, SitePolicy(lifetime_epsilon=1000.0))
    worst = SitePolicy(budget_epsilon="worst_case", lifetime_epsilon=1000.0)
    own = publish_noise_multiplier(ledger, "run-1", plan, worst)
    assert own > assumed  # less room in the worst case: more noise
    ledger.charge(
        **{
            **charge_args,
            "purpose": PURPOSE,
            "mechanism": "gaussian",
            "l2_sensitivity": None,
            "l1_sensitivity": None,
            "own_noise_multiplier": None,
            "noise_multiplier": own,
            "run_epsilon_cap": 3.0,
            "budget_view": "own",
        }
    )  # type: ignore[arg-type]
    assert ledger.epsilon_run("run-1", plan.privacy.delta, "own") <= 3.0 * (1 + 1e-9)
    row = ledger.releases("run-1")[-1]
    assert row["own_noise_multiplier"] is None  # its own noise is all of it


def test_publishing_is_off_by_default_and_only_the_sites_config_turns_it_on(
    tmp_path: Path,
) -> None:
    from site_agent.config import ConfigError, load_site_config
    from tests.unit.site_agent.test_config import MINIMAL, kit

    path = kit(tmp_path, MINIMAL)
    assert load_site_config(path, env={}).policy.publish_own_metrics is False
    env = {"CONCORDIA_POLICY_PUBLISH_OWN_METRICS": "true"}
    assert load_site_config(path, env=env).policy.publish_own_metrics is True
    (tmp_path / "on").mkdir()
    (tmp_path / "bad").mkdir()
    on = kit(tmp_path / "on", MINIMAL, "[policy]\npublish_own_metrics = true\n")
    assert load_site_config(on, env={}).policy.publish_own_metrics is True
    bad = kit(tmp_path / "bad", MINIMAL, '[policy]\npublish_own_metrics = "sometimes"\n')
    with pytest.raises(ConfigError, match=r"policy\.publish_own_metrics"):
        load_site_config(bad, env={})
