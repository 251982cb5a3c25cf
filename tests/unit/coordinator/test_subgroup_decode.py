"""The final evaluation's blocks, from known per-site truth through noise, quantisation and the
modular sum, decode into per-subgroup figures and ΔC within their stated uncertainty."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coordinator import aggregation
from federation.evaluation_release import EvaluationRelease
from federation.plan import RunPlan, parse_plan
from federation.releases import MAX_SITES
from federation.subgroup_metrics import importance_rows, subgroup_gaps, subgroup_rows
from secagg.quantize import quantize
from tests.unit.coordinator.test_engine import PLAN

pytestmark = pytest.mark.unit

ROUNDS = 2


def _plan(sigma: float) -> RunPlan:
    text = PLAN.format(rounds=ROUNDS, attempts=3)
    return parse_plan(
        text + f"\n[privacy]\nmetrics_noise_multiplier = {sigma}\n"
        '[evaluation]\nsubgroups = ["sex", "age"]\nimportance = true\n'
    )


def _truth(release: EvaluationRelease) -> np.ndarray:
    """One site's raw block sums: women better discriminated than men (C 0.70 vs 0.55), the
    older band worse calibrated (IBS 0.24 vs 0.12; O/E 1.33 vs 0.8, 1 overall and by sex: the
    expected coordinate is E / cap = E / 4); age matters (ΔC 0.1), sex not (ΔC 0); a permuted
    block releases no calibration (0, 0)."""
    rows = {
        "overall": [1500.0, 400.0, 70.0, 2480.0, 4000.0, 380.0, 95.0],
        "subgroup:sex=F": [750.0, 200.0, 35.0, 1400.0, 2000.0, 190.0, 47.5],
        "subgroup:sex=M": [750.0, 200.0, 35.0, 1100.0, 2000.0, 190.0, 47.5],
        "subgroup:age=[40, 75)": [750.0, 200.0, 22.5, 1240.0, 2000.0, 190.0, 59.375],
        "subgroup:age=[75, 110]": [750.0, 200.0, 45.0, 1240.0, 2000.0, 190.0, 35.625],
        "importance:age": [1500.0, 400.0, 80.0, 2080.0, 4000.0, 0.0, 0.0],
        "importance:sex": [1500.0, 400.0, 70.0, 2480.0, 4000.0, 0.0, 0.0],
    }
    return np.array([rows[name] for name in release.block_names])


def _sum(
    release: EvaluationRelease, truth: np.ndarray, sigma: float, n: int, seed: int
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    total = np.zeros(release.length, dtype=np.uint32)
    for _ in range(n):  # what each local-mode site caches (site_agent/handlers.py, evaluate)
        noised = release.encode(truth) + rng.normal(
            0.0, sigma * release.sensitivity, release.length
        )
        total += quantize(noised, release.quantization(MAX_SITES))  # modulo 2^32
    return total


def test_blocks_decode_into_subgroup_figures_and_delta_c() -> None:
    # σ = 0.5 over 6 sites: small enough noise that every gap of `_truth` is resolvable (at σ = 2
    # over 3 sites, C's 0.15 was 1.6 SE and O/E not resolvable, so a flag there was luck)
    sigma, n = 0.5, 6
    plan = _plan(sigma)
    release = EvaluationRelease.for_round(plan, ROUNDS)
    assert release.block_names == (
        "overall",
        "subgroup:sex=F",
        "subgroup:sex=M",
        "subgroup:age=[40, 75)",
        "subgroup:age=[75, 110]",
        "importance:age",
        "importance:sex",
    )
    truth = _truth(release)
    metrics = aggregation.decode_metrics_sum(plan, _sum(release, truth, sigma, n, 1), n, n, ROUNDS)
    noise = sigma * release.sensitivity * math.sqrt(n)
    assert aggregation.metrics_noise_std(plan, n, ROUNDS) == pytest.approx(noise)
    rows = {(r["feature"], r["level"]): r for r in subgroup_rows(metrics)}
    assert set(rows) == {("sex", "F"), ("sex", "M"), ("age", "[40, 75)"), ("age", "[75, 110]")}
    for (feature, level), row in rows.items():
        block = truth[release.block_names.index(f"subgroup:{feature}={level}")]
        true_c = block[3] / block[4]
        true_ibs = release.base.max_weight * block[2] / block[0]
        true_oe = block[5] / (release.base.expected_cap * block[6])
        assert abs(row["c_windowed"] - true_c) < 4 * row["c_windowed_se"]
        assert abs(row["ibs"] - true_ibs) < 4 * row["ibs_se"]
        assert abs(row["oe_ratio"] - true_oe) < 4 * row["oe_ratio_se"]
    assert abs(metrics["oe_ratio"] - 1.0) < 4 * metrics["oe_ratio_se"]  # in the large
    importance = {r["feature"]: r for r in importance_rows(metrics)}
    assert abs(importance["age"]["delta_c"] - 0.1) < 4 * importance["age"]["delta_c_se"]
    assert abs(importance["sex"]["delta_c"]) < 4 * importance["sex"]["delta_c_se"]
    gaps = {(g["feature"], g["metric"]): g for g in subgroup_gaps(metrics)}
    assert gaps[("sex", "c_windowed")]["flagged"]  # 0.15 against an SE of ≈ 0.02
    assert gaps[("sex", "c_windowed")]["highest"] == "F"
    assert gaps[("age", "ibs")]["flagged"]
    assert gaps[("age", "oe_ratio")]["flagged"]  # 0.53 against an SE of ≈ 0.1
    assert gaps[("age", "oe_ratio")]["highest"] == "[75, 110]"
    assert not gaps[("sex", "oe_ratio")]["flagged"]  # both levels calibrated


def test_an_evaluation_before_the_final_one_has_no_blocks() -> None:
    plan = _plan(2.0)
    release = EvaluationRelease.for_round(plan, 1)
    truth = np.array([[1500.0, 400.0, 70.0, 2480.0, 4000.0, 380.0, 95.0]])
    metrics = aggregation.decode_metrics_sum(plan, _sum(release, truth, 2.0, 3, 2), 3, 3, 1)
    assert "c_windowed" in metrics
    assert not subgroup_rows(metrics)
    assert not importance_rows(metrics)


def test_gap_intervals_cover_the_true_gap() -> None:
    """Coverage of the stated uncertainty of a subgroup gap (known truth, repeated noise)."""
    sigma, n, draws = 4.0, 3, 200
    plan = _plan(sigma)
    release = EvaluationRelease.for_round(plan, ROUNDS)
    truth = _truth(release)
    hits = 0
    for seed in range(draws):
        metrics = aggregation.decode_metrics_sum(
            plan, _sum(release, truth, sigma, n, 100 + seed), n, n, ROUNDS
        )
        rows = {r["level"]: r for r in subgroup_rows(metrics) if r["feature"] == "sex"}
        gap = rows["F"]["c_windowed"] - rows["M"]["c_windowed"]
        se = math.hypot(rows["F"]["c_windowed_se"], rows["M"]["c_windowed_se"])
        hits += abs(gap - 0.15) <= 1.959963984540054 * se
    assert 0.88 <= hits / draws <= 1.0


def test_a_gap_involving_an_unresolvable_figure_is_never_flagged() -> None:
    """The demo's case: C 0.95 ± 0.37 (not resolvable) against 0.38 ± 0.20, 2.7 SE apart."""
    metrics = {
        "subgroup:sex=F:c_windowed": 0.955,
        "subgroup:sex=F:c_windowed_se": 0.186,
        "subgroup:sex=F:c_windowed_resolvable": 0.0,
        "subgroup:sex=M:c_windowed": 0.379,
        "subgroup:sex=M:c_windowed_se": 0.102,
        "subgroup:sex=M:c_windowed_resolvable": 1.0,
    }
    (gap,) = subgroup_gaps(metrics)
    assert abs(gap["gap"]) > 1.959963984540054 * gap["se"]
    assert not gap["levels_resolvable"] and not gap["flagged"]
    metrics["subgroup:sex=F:c_windowed_resolvable"] = 1.0
    (gap,) = subgroup_gaps(metrics)
    assert gap["flagged"]
