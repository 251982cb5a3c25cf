"""The k-anonymity layer at the site: public bands and declared hierarchies, suppression below k,
the check report, and a real agent whose every release reads the generalised rows."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.plan import RunPlan, parse_plan
from federation.plan_anonymity import KAnonymityPlan
from federation.wire.v1 import federation_pb2 as pb
from site_agent.anonymity import (
    AnonymisedDataset,
    anonymise,
    band_edges,
    class_keys,
    generalise,
    group_representatives,
    suppression_mask,
)
from site_agent.data import LocalDataset
from site_agent.data_audit import class_summary
from survival.schema import CategoricalFeature, FeatureSchema, NumericFeature

pytestmark = pytest.mark.unit

AGE = NumericFeature(name="age", min=40.0, max=110.0)
SEX = CategoricalFeature(name="sex", levels=["F", "M"])
GRADE = CategoricalFeature(name="grade", levels=["1", "2", "3", "4"])
CREAT = NumericFeature(name="creat", min=0.2, max=15.0, required=False, impute=1.0)
SCHEMA = FeatureSchema(features=[AGE, SEX, GRADE, CREAT])
LAYER = KAnonymityPlan(
    k=3,
    quasi_identifiers=["age", "sex", "grade", "creat"],
    bands=5,
    cuts={"creat": [1.0, 2.0]},
    hierarchies={"grade": {"2": "low", "1": "low", "4": "high", "3": "high"}},
)

ages = st.floats(min_value=AGE.min, max_value=AGE.max, allow_nan=False)
rows = st.lists(
    st.tuples(
        ages,
        st.sampled_from(SEX.levels),
        st.sampled_from(GRADE.levels),
        st.one_of(st.none(), st.floats(min_value=0.2, max_value=15.0, allow_nan=False)),
    ),
    min_size=1,
    max_size=60,
)


def matrix(data: list[tuple[float, str, str, float | None]]) -> np.ndarray:
    columns: dict[str, list[object]] = {
        "age": [r[0] for r in data],
        "sex": [r[1] for r in data],
        "grade": [r[2] for r in data],
        "creat": [r[3] for r in data],
    }
    return SCHEMA.raw_matrix(columns)


def dataset(raw: np.ndarray, event: np.ndarray) -> LocalDataset:
    n = raw.shape[0]
    return LocalDataset(
        raw=raw,
        time=np.arange(n, dtype=np.float64) + 1.0,
        event=event,
        holdout=np.arange(n) % 5 == 0,
        n_rows=n + 7,
        excluded={"age: missing": 7},
        pseudonyms=[f"p{i}" for i in range(n)],
    )


def plan_with(layer: KAnonymityPlan | None) -> RunPlan:
    body: dict[str, Any] = {
        "name": "t",
        "quorum": 2,
        "features": [f.model_dump() for f in SCHEMA.features],
        "time_grid": {"cuts": [100.0, 200.0]},
    }
    if layer is not None:
        body["privacy"] = {"k_anonymity": layer.model_dump()}
    return RunPlan.model_validate(body)


# ---------------------------------------------------------------------- generalisation


def test_band_edges_are_the_plans_bounds_cut_into_equal_bands_or_its_cuts() -> None:
    edges = band_edges(AGE, LAYER)
    assert edges[0] == AGE.min and edges[-1] == AGE.max and edges.size == LAYER.bands + 1
    assert np.allclose(np.diff(edges), (AGE.max - AGE.min) / LAYER.bands)
    assert band_edges(CREAT, LAYER).tolist() == [CREAT.min, *LAYER.cuts["creat"], CREAT.max]


@settings(max_examples=60, deadline=None)
@given(rows, rows)
def test_a_rows_generalisation_depends_on_the_plan_only_never_on_the_other_rows(
    mine: list[tuple[float, str, str, float | None]],
    others: list[tuple[float, str, str, float | None]],
) -> None:
    """The band edges come from the plan's bounds, so the same patient is generalised the same
    way whatever range the rest of the site's data spans."""
    alone = generalise(SCHEMA, LAYER, matrix(mine))
    together = generalise(SCHEMA, LAYER, matrix(mine + others))
    assert np.array_equal(alone, together[: len(mine)])


@settings(max_examples=60, deadline=None)
@given(rows)
def test_a_numeric_value_becomes_its_public_bands_midpoint_inside_the_bounds(
    data: list[tuple[float, str, str, float | None]],
) -> None:
    raw = matrix(data)
    out = generalise(SCHEMA, LAYER, raw)
    width = (AGE.max - AGE.min) / LAYER.bands
    for before, after in zip(raw[:, 0], out[:, 0], strict=True):
        band = min(math.floor((before - AGE.min) / width), LAYER.bands - 1)
        assert after == pytest.approx(AGE.min + (band + 0.5) * width)
        assert AGE.min <= after <= AGE.max
    creat, missing = raw[:, -2], raw[:, -1] > 0.5
    assert np.array_equal(out[missing, -2], creat[missing])  # the imputed constant stays
    assert np.array_equal(out[:, -1], raw[:, -1])
    for before, after in zip(creat[~missing], out[~missing, -2], strict=True):
        low = max(e for e in (0.2, 1.0, 2.0) if e <= before)
        high = {0.2: 1.0, 1.0: 2.0, 2.0: 15.0}[low]
        assert after == pytest.approx((low + high) / 2)


def _levels(feature: CategoricalFeature, block: np.ndarray) -> list[str]:
    return [
        feature.levels[int(row.argmax()) + 1] if row.any() else feature.levels[0] for row in block
    ]


@settings(max_examples=40, deadline=None)
@given(rows)
def test_a_hierarchy_encodes_each_group_as_its_first_declared_level(
    data: list[tuple[float, str, str, float | None]],
) -> None:
    out = generalise(SCHEMA, LAYER, matrix(data))
    grade = _levels(GRADE, out[:, 2:5])
    assert grade == [{"1": "1", "2": "1", "3": "3", "4": "3"}[r[2]] for r in data]
    assert _levels(SEX, out[:, 1:2]) == [r[1] for r in data]  # no hierarchy: unchanged


def test_a_level_the_hierarchy_does_not_list_keeps_its_own_group() -> None:
    partial = KAnonymityPlan(k=2, quasi_identifiers=["grade"], hierarchies={"grade": {"3": "1"}})
    # "3" joins the label "1", which level "1" keeps as its own: one group, encoded as "1"
    assert group_representatives(GRADE, partial) == [0, 1, 0, 3]


def test_columns_outside_the_quasi_identifiers_are_untouched() -> None:
    only_sex = KAnonymityPlan(k=2, quasi_identifiers=["sex"])
    raw = matrix([(41.3, "M", "2", 3.3), (99.9, "F", "4", None)])
    assert np.array_equal(generalise(SCHEMA, only_sex, raw), raw)


# ---------------------------------------------------------------------- suppression


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 6), max_size=80), st.integers(2, 10))
def test_suppression_keeps_exactly_the_rows_of_classes_of_at_least_k(
    labels: list[int], k: int
) -> None:
    keys = [(float(label),) for label in labels]
    keep = suppression_mask(keys, k)
    kept = Counter(key for key, ok in zip(keys, keep, strict=True) if ok)
    assert all(size >= k for size in kept.values())
    sizes = Counter(keys)
    assert all(keep[i] == (sizes[key] >= k) for i, key in enumerate(keys))  # nothing more


@settings(max_examples=60, deadline=None)
@given(rows, st.integers(2, 6), st.lists(st.integers(0, 1), min_size=60, max_size=60))
def test_every_class_the_layer_leaves_holds_at_least_k_rows(
    data: list[tuple[float, str, str, float | None]], k: int, events: list[int]
) -> None:
    layer = LAYER.model_copy(update={"k": k})
    raw = matrix(data)
    event = np.asarray(events[: len(data)], dtype=np.int64)
    before = dataset(raw, event)
    after = anonymise(plan_with(layer), before)
    assert isinstance(after, AnonymisedDataset) and after.anonymity is not None
    report = after.anonymity
    sizes = Counter(class_keys(SCHEMA, layer.quasi_identifiers, after.raw))
    assert all(size >= k for size in sizes.values())
    assert report.k == (min(sizes.values()) if sizes else None)
    assert report.classes == len(sizes)
    assert report.rows_suppressed == before.n_valid - after.n_valid
    assert (
        report.k_before == class_summary(class_keys(SCHEMA, layer.quasi_identifiers, raw), event).k
    )
    # the same patients leave every view of the dataset together
    assert after.pseudonyms is not None and len(after.pseudonyms) == after.n_valid
    assert after.holdout.size == after.time.size == after.event.size == after.n_valid
    assert after.n_rows == before.n_rows - report.rows_suppressed  # no difference to send
    assert after.excluded == before.excluded
    for pseudonym, time_ in zip(after.pseudonyms, after.time, strict=True):
        assert f"p{int(time_) - 1}" == pseudonym


def test_a_plan_without_the_layer_leaves_the_data_as_it_is() -> None:
    data = dataset(matrix([(50.0, "F", "1", None)] * 3), np.zeros(3, dtype=np.int64))
    assert anonymise(plan_with(None), data) is data


# ---------------------------------------------------------------------- site_agent check


LAYER_TOML = """
[privacy.k_anonymity]
k = {k}
quasi_identifiers = ["age", "sex"]
bands = 5
"""


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    from fedctl.demo import plan_text
    from fedctl.localfed import LocalFederation, flchain_hospitals

    root = tmp_path_factory.mktemp("anonymity-check")
    fed = LocalFederation(root / "fed", ("hospital-a", "hospital-b"))
    fed.prepare()
    flchain_hospitals(fed)
    yield fed.site_kit("hospital-b") / "site.toml", plan_text(3)  # ages 54-110


def _expected_suppressed(config: Path, plan: RunPlan, k: int) -> tuple[int, int]:
    """(rows suppressed, rows valid) counted independently: 5 age bands of 14 years, by sex."""
    from site_agent.config import load_site_config
    from site_agent.data import load_local_data

    data = load_local_data(load_site_config(config).data, plan.feature_schema)
    names = plan.feature_schema.encoded_names()
    age, male = data.raw[:, names.index("age")], data.raw[:, names.index("sex=M")]
    bands = np.minimum(np.floor((age - 40.0) / 14.0), 4)
    sizes = Counter(zip(bands.tolist(), male.tolist(), strict=True))
    return sum(n for n in sizes.values() if n < k), data.n_valid


@pytest.mark.parametrize("k", [5, 20])
def test_check_reports_the_layers_target_k_and_the_rows_it_suppresses(
    kit: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], k: int
) -> None:
    from site_agent.__main__ import main

    config, text = kit
    plan_path = tmp_path / "plan.toml"
    plan_path.write_text(text.replace("[secagg]", LAYER_TOML.format(k=k) + "\n[secagg]"))
    plan = parse_plan(plan_path.read_text())
    code = main(["check", "--config", str(config), "--plan", str(plan_path), "--output", "json"])
    report = json.loads(capsys.readouterr().out)
    assert code in (0, 1)
    entry = report["k_anonymity"]
    suppressed, valid = _expected_suppressed(config, plan, k)
    assert entry["k_target"] == k and entry["quasi_identifiers"] == ["age", "sex"]
    assert entry["rows_suppressed"] == suppressed
    assert entry["k"] is None or entry["k"] >= k
    assert entry["k_before"] is not None and entry["k_before"] >= 1
    assert entry["l"] is None or entry["l"] in (1, 2)
    assert report["rows_valid"] == valid  # the quality report describes the export
    homogeneous = any("l-diversity is 1" in w for w in report["warnings"])
    assert homogeneous == (entry["l"] == 1)
    assert suppressed > 0  # the oldest patients' classes are small: suppression is exercised
    main(["check", "--config", str(config), "--plan", str(plan_path)])
    out = capsys.readouterr().out
    assert f"target k = {k}" in out and f"rows suppressed {suppressed}" in out


def test_check_warns_of_audited_quasi_identifiers_the_layer_leaves_out(
    kit: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from site_agent.__main__ import main

    config, text = kit
    plan_path = tmp_path / "plan.toml"
    layer = LAYER_TOML.format(k=2).replace('["age", "sex"]', '["sex"]')
    plan_path.write_text(text.replace("[secagg]", layer + "\n[secagg]"))
    main(["check", "--config", str(config), "--plan", str(plan_path), "--output", "json"])
    report = json.loads(capsys.readouterr().out)
    assert any("'age'" in w and "does not generalise" in w for w in report["warnings"])


# ---------------------------------------------------------------------- a real agent


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.adversarial.harness import make_consortium

    built = make_consortium(
        tmp_path_factory.mktemp("anonymity-agent") / "fed",
        ("hospital-a", "hospital-b", "hospital-c"),
        {"lifetime_epsilon": 10_000.0},
    )
    try:
        yield built
    finally:
        built.close()


def test_an_agent_trains_and_reloads_on_the_generalised_rows(
    consortium: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import site_agent.train as train_module
    from tests.adversarial.harness import adversarial_plan, audit_actions
    from tests.unit.site_agent.test_handlers import local_task, offer, stats_task

    base = adversarial_plan(quorum=3, rounds=2)
    layer = {"k": 40, "quasi_identifiers": ["age", "sex"], "bands": 5}
    body = base.model_dump()
    body["privacy"]["k_anonymity"] = layer
    plan = RunPlan.model_validate(body)
    agent = consortium.agents["hospital-a"]
    result = agent.handle(offer("run-k", plan))
    assert not result.HasField("error"), result.error.message
    data = agent.handlers.runs["run-k"].data
    assert isinstance(data, AnonymisedDataset) and data.anonymity is not None
    midpoints = {40.0 + 14.0 * (i + 0.5) for i in range(5)}
    assert set(np.round(data.raw[:, 0], 9).tolist()) <= midpoints
    accepted = [e for e in audit_actions(agent, "plan_accepted") if e["run_id"] == "run-k"]
    assert accepted[-1]["k_anonymity"] == data.anonymity.to_json()

    seen: list[np.ndarray] = []
    real = train_module.LocalTrainer.train_round

    def spy(self: Any, start: Any, x: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        seen.append(np.asarray(x))
        return real(self, start, x, *args, **kwargs)

    monkeypatch.setattr(train_module.LocalTrainer, "train_round", spy)
    del agent.handlers.runs["run-k"]  # as after a restart: reloaded through the same layer
    assert not agent.handle(stats_task("run-k", "")).HasField("error")
    trained = agent.handle(local_task(plan, "run-k", pb.TASK_KIND_TRAIN))
    assert not trained.HasField("error"), trained.error.message
    reloaded = agent.handlers.runs["run-k"].data
    assert isinstance(reloaded, AnonymisedDataset) and reloaded.anonymity == data.anonymity
    assert seen and seen[0].shape[0] == reloaded.n_train  # standardisation 0/1: x is the raw
    assert set(np.round(seen[0][:, 0].astype(np.float64), 3).tolist()) <= {
        round(m, 3) for m in midpoints
    }
