"""The empirical privacy audit: its statistics are sound and have power, and a tiny audit runs
end to end through the real trainer, accountant and aggregation with the bound holding."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from site_agent import membership_audit as ma
from tests.unit.benchmarks._load import load

pytestmark = pytest.mark.unit

REQUIRED = ("epsilon", "empirical_epsilon_lower", "mia_advantage", "tpr_at_fpr_0.01")


# ---------------------------------------------------------------------- statistics
@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=60),
    seed=st.integers(0, 2**32 - 1),
)
def test_roc_figures_are_rates_and_a_perfect_split_is_found(scores: list[float], seed: int) -> None:
    labels = np.random.default_rng(seed).random(len(scores)) < 0.5
    labels[0], labels[1] = True, False
    r = ma.roc(scores, labels)
    assert 0.0 <= r.advantage <= 1.0 and 0.0 <= r.tpr_at_low_fpr <= 1.0 and 0.0 <= r.auc <= 1.0
    assert r.members + r.non_members == len(scores)
    perfect = ma.roc(labels.astype(float), labels)  # members score 1, non-members 0
    assert perfect.advantage == 1.0 and perfect.tpr_at_low_fpr == 1.0 and perfect.auc == 1.0
    inverted = ma.roc(-labels.astype(float), labels)
    assert inverted.advantage == 0.0 and inverted.auc == 0.0


@settings(max_examples=80, deadline=None)
@given(
    m=st.integers(1, 3000),
    data=st.data(),
    delta=st.sampled_from([0.0, 1e-6, 1e-5, 1e-3]),
)
def test_one_run_p_value_grows_with_epsilon_and_the_bound_is_its_edge(
    m: int, data: st.DataObject, delta: float
) -> None:
    r = data.draw(st.integers(0, m))
    v = data.draw(st.integers(0, r))
    values = [ma.one_run_p_value(m, r, v, eps, delta) for eps in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(values))
    lower = ma.one_run_epsilon_lower(m, r, v, delta)
    assert lower >= 0.0
    if 0.0 < lower < math.inf:  # rejected just below the bound, not rejected just above it
        assert ma.one_run_p_value(m, r, v, lower * 0.999, delta) < 0.05
        assert ma.one_run_p_value(m, r, v, lower * 1.01 + 1e-6, delta) >= 0.05


@pytest.mark.parametrize("epsilon", [0.5, 2.0, 4.0])
def test_the_one_run_bound_never_exceeds_the_truth_and_finds_most_of_it(epsilon: float) -> None:
    """Guesses from ε-DP randomised response (each right w.p. e^ε/(1+e^ε), the most ε-DP
    allows): over 40 audits the bound stays at or below ε in ≥ 90 % (it may fail 5 % of the
    time by design) and, with 20 000 guesses, recovers a good part of ε."""
    rng = np.random.default_rng(int(epsilon * 10))
    q = 1 / (1 + math.exp(-epsilon))
    bounds = [
        ma.one_run_epsilon_lower(20_000, 20_000, int(rng.binomial(20_000, q)), 1e-5)
        for _ in range(40)
    ]
    assert sum(b <= epsilon for b in bounds) >= 36
    assert np.median(bounds) > 0.8 * epsilon


def test_guesses_count_the_top_and_bottom_scores() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.8, 0.2, 0.3])
    included = np.array([False, True, True, False, False, True])
    # "in": 0.9 (right), 0.8 (wrong); "out": 0.1 (right), 0.2 (right)
    assert ma.one_run_guesses(scores, included, 2) == (4, 3)
    with pytest.raises(ma.AuditError, match="cannot guess"):
        ma.one_run_guesses(scores, included, 4)


def test_lira_separates_shifted_members_and_not_unshifted_ones() -> None:
    rng = np.random.default_rng(0)
    patients, models = 400, 8
    member = rng.random((patients, models)) < 0.5
    base = rng.normal(0, 3, size=(patients, 1))  # per-patient difficulty: LiRA's point
    noise = rng.normal(0, 0.3, size=(patients, models))
    for online in (True, False):
        leaky = ma.roc(ma.lira_scores(base + noise + 1.0 * member, member, online=online), member)
        blind = ma.roc(ma.lira_scores(base + noise, member, online=online), member)
        assert leaky.advantage > 0.7 and leaky.tpr_at_low_fpr > 0.2
        assert blind.advantage < 0.1
    # the per-patient calibration is what helps: a global threshold does worse on the leaky data
    threshold = ma.roc(base + noise + 1.0 * member, member)
    assert threshold.advantage < 0.5
    # against separate shadows (what the one-run bound from real patients uses)
    phi = base + noise + 1.0 * member
    split = ma.lira_offline_against(phi[:, 4:], phi[:, :4], member[:, :4])
    assert split.shape == (patients, 4) and ma.roc(split, member[:, 4:]).advantage > 0.6
    blind_split = ma.lira_offline_against(
        (base + noise)[:, 4:], (base + noise)[:, :4], member[:, :4]
    )
    assert ma.roc(blind_split, member[:, 4:]).advantage < 0.12


def test_attribute_guess_picks_the_likelier_value_with_the_prior() -> None:
    nll = np.array([[1.0, 2.0], [2.0, 1.0], [1.0, 1.05]])
    assert ma.attribute_guess(nll, [0.5, 0.5]).tolist() == [0, 1, 0]
    assert ma.attribute_guess(nll, [0.1, 0.9]).tolist() == [1, 1, 1]


def test_logit_likelihood_is_stable_and_decreasing() -> None:
    phi = ma.logit_likelihood([1e-9, 0.01, 0.69314718, 5.0, 50.0])
    assert np.all(np.isfinite(phi)) and np.all(np.diff(phi) < 0)
    assert abs(phi[2]) < 1e-6  # p = 1/2


# ---------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_records() -> list[dict[str, object]]:
    audit = load("privacy_audit")
    config = audit.AuditConfig(
        models=4,
        canaries_per_hospital=6,
        per_hospital=60,
        rounds=2,
        local_epochs=1,
        settings=(None, 3.0),
        control_per_hospital=None,
    )
    records: list[dict[str, object]] = audit.run_audit(config, log=lambda *_: None)
    return records


def test_a_tiny_audit_runs_end_to_end_and_the_bound_holds(
    tiny_records: list[dict[str, object]], tmp_path: Path
) -> None:
    plain, private = tiny_records
    for record in tiny_records:
        assert all(key in record for key in REQUIRED) and record["kind"] == "privacy_audit"
        for key in ("mia_advantage", "tpr_at_fpr_0.01", "threshold_advantage"):
            value = record[key]
            assert isinstance(value, float) and 0.0 <= value <= 1.0, key
        assert record["canaries"] == 4 * 3 * 6 and record["mia_pairs"] == 4 * 3 * 60
        assert isinstance(record["attribute_gain"], float)
    assert plain["epsilon"] is None and plain["bound_held"] is None
    assert plain["epsilon_spent"] is None and plain["noise_multiplier"] is None
    assert private["epsilon"] == 3.0
    spent, lower = private["epsilon_spent"], private["empirical_epsilon_lower"]
    assert isinstance(spent, float) and isinstance(lower, float)
    assert 0.0 < spent <= 3.0  # the sites' accountant, after the statistics prior
    assert lower <= spent and private["bound_held"] is True  # the guarantee the audit checks
    assert lower == max(
        private["empirical_epsilon_lower_canaries"], private["empirical_epsilon_lower_mia"]
    )
    assert isinstance(private["noise_multiplier"], float) and private["noise_multiplier"] > 0
    out = tmp_path / "audit.json"
    load("_report").write_json(out, tiny_records)
    assert json.loads(out.read_text(encoding="utf-8"))[1]["epsilon"] == 3.0


def test_the_audit_plan_is_the_demo_plan_at_each_epsilon() -> None:
    from fedctl.demo import plan_text
    from federation.plan import parse_plan

    audit = load("privacy_audit")
    demo = parse_plan(plan_text(10))
    for eps in (1.0, 3.0, 8.0):
        plan = audit.audit_plan(audit.FULL, eps)
        assert plan.privacy.epsilon == eps and plan.training == demo.training
        assert plan.features == demo.features and plan.secagg == demo.secagg
    assert audit.audit_plan(audit.FULL, 3.0).privacy == demo.privacy
