"""FLCHAIN loader, fixed split, hospital splits and per-hospital CSVs (needs the data extra)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from survival.data import (
    FLCHAIN_SCHEMA,
    default_time_grid,
    fixed_split,
    hospital_column_names,
    load_flchain,
    read_hospital_csv,
    split_hospitals,
    write_hospital_csvs,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def flchain() -> pd.DataFrame:
    return load_flchain()


def test_load_flchain(flchain: pd.DataFrame) -> None:
    assert "chapter" not in flchain.columns
    assert list(flchain.columns) == [*FLCHAIN_SCHEMA.names, "time", "event"]
    assert len(flchain) == 7874
    assert set(flchain["event"].unique()) == {0, 1}
    assert flchain["creatinine"].isna().sum() > 1000  # kept missing, imputed by the schema
    check = FLCHAIN_SCHEMA.validate_rows(flchain)
    assert check.valid.all(), check.reasons
    matrix = FLCHAIN_SCHEMA.raw_matrix(flchain, check.valid)
    assert matrix.shape == (7874, len(FLCHAIN_SCHEMA.encoded_names()))
    missing = FLCHAIN_SCHEMA.encoded_names().index("creatinine:missing")
    assert matrix[:, missing].sum() == flchain["creatinine"].isna().sum()


def test_default_grid_covers_follow_up(flchain: pd.DataFrame) -> None:
    grid = default_time_grid()
    events, at_risk = grid.interval_counts(flchain["time"], flchain["event"])
    assert at_risk[0] == len(flchain)
    assert (events > 0).all() and (at_risk[-1] > 100)  # no empty interval, a usable tail


def test_fixed_split_is_deterministic_and_stratified(flchain: pd.DataFrame) -> None:
    train, test = fixed_split(flchain)
    again_train, again_test = fixed_split(flchain)
    pd.testing.assert_frame_equal(train, again_train)
    pd.testing.assert_frame_equal(test, again_test)
    assert len(train) + len(test) == len(flchain)
    assert len(test) == pytest.approx(0.2 * len(flchain), abs=2)
    assert abs(train["event"].mean() - test["event"].mean()) < 0.002
    # Disjoint and complete: the two halves together are the data set, row for row.
    merged = pd.concat([train, test]).sort_values(["age", "kappa", "lambda", "time"])
    original = flchain.sort_values(["age", "kappa", "lambda", "time"])
    pd.testing.assert_frame_equal(merged.reset_index(drop=True), original.reset_index(drop=True))
    other_train, _ = fixed_split(flchain, seed=1)
    assert not train.equals(other_train)


@pytest.mark.parametrize("method", ["age", "dirichlet"])
def test_hospitals_partition_training_set(flchain: pd.DataFrame, method: str) -> None:
    train, _ = fixed_split(flchain)
    hospitals = split_hospitals(train, 3, method, seed=0)  # type: ignore[arg-type]
    index = np.concatenate([h.index.to_numpy() for h in hospitals])
    assert sorted(index.tolist()) == list(range(len(train)))
    assert all(len(h) >= 0.2 * len(train) / 3 for h in hospitals)
    again = split_hospitals(train, 3, method, seed=0)  # type: ignore[arg-type]
    assert all(a.equals(b) for a, b in zip(hospitals, again, strict=True))


def test_age_bands_are_ordered_and_equal(flchain: pd.DataFrame) -> None:
    train, _ = fixed_split(flchain)
    hospitals = split_hospitals(train, 4, "age")
    sizes = [len(h) for h in hospitals]
    assert max(sizes) - min(sizes) <= 1
    for younger, older in itertools.pairwise(hospitals):
        assert younger["age"].max() <= older["age"].min()
    assert hospitals[0]["event"].mean() < hospitals[-1]["event"].mean()  # real heterogeneity


def test_dirichlet_skews_labels(flchain: pd.DataFrame) -> None:
    train, _ = fixed_split(flchain)
    rates = [h["event"].mean() for h in split_hospitals(train, 3, "dirichlet", alpha=0.3)]
    assert max(rates) - min(rates) > 0.1
    with pytest.raises(ValueError, match="alpha"):
        split_hospitals(train, 3, "dirichlet", alpha=0.0)
    with pytest.raises(ValueError, match="method"):
        split_hospitals(train, 3, "random")  # type: ignore[arg-type]


def test_hospital_column_names_are_specific() -> None:
    mappings = hospital_column_names(7)
    for mapping in mappings:
        assert set(mapping) == {*FLCHAIN_SCHEMA.names, "time", "event"}
        assert len(set(mapping.values())) == len(mapping)
        assert not set(mapping.values()) & set(mapping)  # no consortium name reused as-is
    spellings = {tuple(sorted(m.values())) for m in mappings}
    assert len(spellings) == 7


def test_csv_round_trip_with_hospital_names(flchain: pd.DataFrame, tmp_path: Path) -> None:
    train, _ = fixed_split(flchain)
    paths = write_hospital_csvs(tmp_path, train, 3, "age", seed=0)
    assert [p.name for p in paths] == ["hospital-1.csv", "hospital-2.csv", "hospital-3.csv"]
    hospitals = split_hospitals(train, 3, "age", seed=0)
    for path, names, original in zip(paths, hospital_column_names(3), hospitals, strict=True):
        header = path.read_text().splitlines()[0].split(",")
        assert header == [names[c] for c in original.columns]
        back = read_hospital_csv(path, names)
        check = FLCHAIN_SCHEMA.validate_rows(back)
        assert check.valid.all(), check.reasons
        np.testing.assert_array_equal(
            FLCHAIN_SCHEMA.raw_matrix(back, check.valid),
            FLCHAIN_SCHEMA.raw_matrix(original, None),
        )
        np.testing.assert_array_equal(back["time"].astype(float), original["time"])
        np.testing.assert_array_equal(back["event"].astype(int), original["event"])
