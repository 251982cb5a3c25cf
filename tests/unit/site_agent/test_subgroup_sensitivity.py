"""The final evaluation's blocks (subgroups, permuted features) are noised against
`EvaluationRelease.sensitivity`: adding or removing one held-out patient must never move the
weighted release by more, whatever its subgroup levels, ties or feature values; changing one
patient moves it by at most twice that."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import site_agent.releases as releases
from federation.evaluation_release import BLOCK, EvaluationRelease, permuted_sensitivity
from federation.plan import RunPlan, parse_plan
from federation.plan_evaluation import feature_columns
from site_agent.releases import consortium_censoring, evaluation_blocks

pytestmark = pytest.mark.unit

PLAN_TEXT = """
name = "subgroups"
[time_grid]
cuts = [1.0, 2.0, 3.0, 4.0]
[training]
rounds = 2
[evaluation]
subgroups = ["sex", "age", "creat"]
cuts = {{ age = [60.0, 75.0] }}
importance = {importance}
[[features]]
kind = "numeric"
name = "age"
min = 40.0
max = 100.0
[[features]]
kind = "categorical"
name = "sex"
levels = ["F", "M", "X"]
[[features]]
kind = "numeric"
name = "creat"
min = 0.0
max = 10.0
required = false
impute = 1.0
"""
K = 4
CENSORING = consortium_censoring(
    parse_plan(PLAN_TEXT.format(importance="false")).time_grid,
    np.array([6.0, 5.0, 4.0, 3.0]),
    np.array([120.0, 100.0, 80.0, 60.0]),
)
TIE_KEY = b"hospital-a|run-1"
BETA = np.array([0.03, 0.4, -0.2, 0.25, 0.5])  # age, sex=M, sex=X, creat, creat:missing


def plan(importance: bool) -> RunPlan:
    return parse_plan(PLAN_TEXT.format(importance=str(importance).lower()))


def predict_rows(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A fixed model: each row's risk and survival curve are functions of that row alone."""
    risk = raw @ BETA - 2.0
    surv = np.exp(-np.exp(risk)[:, None] * np.arange(1, K + 1)[None, :] / K)
    return surv, risk


# Few distinct values (ties in time, equal rows: the hard cases) or anything in range.
times = st.one_of(st.sampled_from([0.5, 1.0, 2.0, 3.0, 5.0]), st.floats(0.0, 6.0))
ages = st.one_of(st.sampled_from([40.0, 60.0, 75.0, 100.0]), st.floats(40.0, 100.0))
creats = st.one_of(st.none(), st.sampled_from([1.0, 5.0]), st.floats(0.0, 10.0))
patients = st.tuples(times, st.integers(0, 1), ages, st.integers(0, 2), creats)
Patient = tuple[float, int, float, int, float | None]


def encode(rows: list[Patient]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    raw = np.array(
        [
            [
                age,
                float(sex == 1),
                float(sex == 2),
                1.0 if creat is None else creat,
                float(creat is None),
            ]
            for _, _, age, sex, creat in rows
        ],
        dtype=np.float64,
    ).reshape(len(rows), 5)
    time = np.array([r[0] for r in rows], dtype=np.float64)
    event = np.array([r[1] for r in rows], dtype=np.int64)
    return raw, time, event


def release_of(rows: list[Patient], release: EvaluationRelease, the_plan: RunPlan) -> np.ndarray:
    raw, time, event = encode(rows)
    blocks = evaluation_blocks(
        raw,
        time,
        event,
        predict_rows,
        the_plan.time_grid,
        CENSORING,
        release,
        feature_columns(the_plan.feature_schema),
        TIE_KEY,
    )
    return release.encode(blocks)


@settings(max_examples=250, deadline=None)
@given(
    cohort=st.lists(patients, min_size=1, max_size=30),
    extra=patients,
    position=st.integers(0, 30),
    importance=st.booleans(),
)
def test_one_patient_added_moves_the_release_by_at_most_its_sensitivity(
    cohort: list[Patient], extra: Patient, position: int, importance: bool
) -> None:
    the_plan = plan(importance)
    release = EvaluationRelease.for_round(the_plan, the_plan.training.rounds)
    neighbour = [*cohort]
    neighbour.insert(min(position, len(cohort)), extra)
    moved = release_of(neighbour, release, the_plan) - release_of(cohort, release, the_plan)
    assert np.linalg.norm(moved) <= release.sensitivity * (1 + 1e-9)
    # and each part by its own share of Δ: one level per subgroup feature, each permuted block
    blocks = dict(zip(release.block_names, moved.reshape(release.n_blocks, BLOCK), strict=True))
    s = release.base.sensitivity
    for group in release.groups:
        part = [blocks[f"subgroup:{group.feature}={label}"] for label in group.labels]
        assert np.linalg.norm(part) <= s * (1 + 1e-9)
        # (up to rounding: the test model's matmul over a different number of rows can move
        # another row's curve by an ulp, far below the release's fixed-point step of 1/64)
        assert sum(bool(np.any(np.abs(b) > 1e-12)) for b in part) <= 1
    for feature in release.permuted:
        norm = np.linalg.norm(blocks[f"importance:{feature}"])
        assert norm <= permuted_sensitivity(release.base) * (1 + 1e-9)
        assert np.all(blocks[f"importance:{feature}"][5:] == 0)  # no calibration released
    # the calibration coordinates (observed, expected) of every block move by ≤ their weight
    raw = np.abs(release.decode(moved))
    assert np.all(raw[:, 5:] <= 1.0 + 1e-9)


@settings(max_examples=150, deadline=None)
@given(
    cohort=st.lists(patients, min_size=1, max_size=30),
    changed=patients,
    position=st.integers(0, 29),
)
def test_one_patient_changed_moves_the_release_by_at_most_twice_its_sensitivity(
    cohort: list[Patient], changed: Patient, position: int
) -> None:
    the_plan = plan(True)
    release = EvaluationRelease.for_round(the_plan, the_plan.training.rounds)
    other = [*cohort]
    other[min(position, len(cohort) - 1)] = changed
    moved = release_of(other, release, the_plan) - release_of(cohort, release, the_plan)
    assert np.linalg.norm(moved) <= 2 * release.sensitivity * (1 + 1e-9)


@settings(max_examples=60, deadline=None)
@given(cohort=st.lists(patients, min_size=1, max_size=25), seed=st.integers(0, 2**32 - 1))
def test_the_release_does_not_depend_on_the_rows_order(cohort: list[Patient], seed: int) -> None:
    the_plan = plan(True)
    release = EvaluationRelease.for_round(the_plan, the_plan.training.rounds)
    shuffled = [cohort[i] for i in np.random.default_rng(seed).permutation(len(cohort))]
    np.testing.assert_allclose(
        release_of(shuffled, release, the_plan), release_of(cohort, release, the_plan), atol=1e-9
    )


def test_blocks_only_in_the_final_evaluation_and_their_layout() -> None:
    the_plan = plan(True)
    assert EvaluationRelease.for_round(the_plan, 1).length == BLOCK == 7
    final = EvaluationRelease.for_round(the_plan, 2)
    # sex: 3 levels; age: 3 bands; creat: 2 bands + missing; 3 permuted features
    assert final.n_blocks == 1 + 3 + 3 + 3 + 3
    s = final.base.sensitivity
    expected = np.sqrt(s * s * 4 + 3 * permuted_sensitivity(final.base) ** 2)
    assert final.sensitivity == pytest.approx(expected)
    assert "subgroup:creat=missing" in final.block_names


def test_control_a_permutation_drawn_per_row_breaks_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A keyed random permutation of the row numbers reshuffles every patient's permuted feature
    when one patient is added: a permuted block then moves by more than its sensitivity."""

    def per_row(raw: np.ndarray, time: np.ndarray, event: np.ndarray, key: bytes) -> np.ndarray:
        del time, event
        seed = int.from_bytes(key[:8], "little") + raw.shape[0]
        return np.random.default_rng(seed).permutation(raw.shape[0])

    monkeypatch.setattr(releases, "_row_order", per_row)
    the_plan = plan(True)
    release = EvaluationRelease.for_round(the_plan, the_plan.training.rounds)
    rng = np.random.default_rng(0)
    worst = 0.0
    permuted = slice(BLOCK * (release.n_blocks - 3), None)  # the three permuted blocks
    for _ in range(50):
        rows: list[Patient] = [
            (
                float(rng.uniform(0, 6)),
                1,
                float(rng.uniform(40, 100)),
                int(rng.integers(0, 3)),
                float(rng.uniform(0, 10)),
            )
            for _ in range(2000)
        ]
        moved = release_of(rows, release, the_plan) - release_of(rows[1:], release, the_plan)
        blocks = moved[permuted].reshape(3, BLOCK)
        worst = max(
            worst, float(np.linalg.norm(blocks, axis=1).max()) / permuted_sensitivity(release.base)
        )
        if worst > 1.0:
            break
    assert worst > 1.0
