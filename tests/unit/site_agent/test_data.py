"""Local data: a bad CSV row is excluded and counted by reason (never its values, never a crash),
a bad file or column is one DataError, and the held-out split is a per-patient keyed hash."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from site_agent.config import DataConfig
from site_agent.data import DataError, LocalDataset, load_local_data
from survival.schema import FeatureSchema

pytestmark = pytest.mark.unit

SCHEMA = FeatureSchema.model_validate(
    {
        "features": [
            {"kind": "numeric", "name": "age", "min": 40, "max": 110},
            {"kind": "categorical", "name": "sex", "levels": ["F", "M"]},
            {
                "kind": "numeric",
                "name": "kappa",
                "min": 0,
                "max": 100,
                "required": False,
                "impute": 1.0,
            },
        ]
    }
)
HEADER = ["patient_id", "age_years", "sex", "kappa", "futime", "died"]


def config(path: Path, **changes: Any) -> DataConfig:
    base: dict[str, Any] = {
        "csv": path,
        "columns": {"age": "age_years"},
        "time_column": "futime",
        "event_column": "died",
        "id_column": "patient_id",
        "holdout_fraction": 0.2,
        "split_salt": "a-secret-salt-of-this-site",
    }
    return DataConfig(**{**base, **changes})


def write(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def load(path: Path, **changes: Any) -> LocalDataset:
    return load_local_data(config(path, **changes), SCHEMA)


def test_bad_rows_are_excluded_and_counted_by_reason(tmp_path: Path) -> None:
    rows = [
        ["p1", "61", "F", "3.5", "400", "1"],
        ["p2", "70", "M", "", "1200", "0"],  # optional kappa missing: imputed, still valid
        ["p3", "55", "M", "2", "30.5", "1.0"],  # "1.0" is an event
        ["p4", "61", "F", "3", "", "1"],
        ["p5", "61", "F", "3", "soon", "1"],
        ["p6", "61", "F", "3", "-1", "0"],
        ["p7", "61", "F", "3", "inf", "0"],
        ["p8", "61", "F", "3", "100", "2"],
        ["p9", "61", "F", "3", "100", ""],
        ["", "61", "F", "3", "100", "0"],
        ["p11", "old", "F", "3", "100", "0"],
        ["p12", "61", "X", "3", "100", "0"],
        ["p13", "", "F", "3", "100", "0"],
        ["p14", "61", "F", "3", "-5", "yes"],  # two reasons: counted under both
    ]
    path = write(tmp_path / "cohort.csv", rows)
    with path.open("a") as handle:
        handle.write("p15,61,F,3\n")  # too few fields
        handle.write("\n,,,,,\n")  # blank lines are not rows
    data = load(path)
    assert data.n_valid == 3
    assert data.n_rows == len(rows) + 1
    assert data.excluded == {
        "malformed row (wrong number of fields)": 1,
        "time: missing": 1,
        "time: not a number": 2,
        "time: negative": 2,
        "event: value in neither data.event_values nor data.censored_values": 2,
        "event: missing": 1,
        "id: missing": 1,
        "age: not a number": 1,
        "sex: unknown level": 1,
        "age: missing": 1,
    }
    assert sorted(data.time.tolist()) == [30.5, 400.0, 1200.0]
    assert sorted(data.event.tolist()) == [0, 1, 1]
    assert data.raw.shape == (3, SCHEMA.n_encoded)
    # Reasons name the column and the rule, never a cell value.
    cells = {"soon", "old", "X", "yes", "inf", "-1", "-5", "p15"}
    assert not [reason for reason in data.excluded if any(cell in reason for cell in cells)]


def test_configuration_problems_are_one_data_error(tmp_path: Path) -> None:
    good = [["p1", "61", "F", "3", "400", "1"]]
    with pytest.raises(DataError, match=r"data\.time_column"):
        load(write(tmp_path / "a.csv", good, [*HEADER[:4], "days", "died"]))
    with pytest.raises(DataError, match="appears more than once"):
        load(write(tmp_path / "b.csv", [[*good[0], "1"]], [*HEADER, "died"]))
    with pytest.raises(DataError, match=r"feature 'age' via data\.columns\.age"):
        load(write(tmp_path / "c.csv", good, ["patient_id", "age", *HEADER[2:]]))
    with pytest.raises(DataError, match=r"data\.id_column"):
        load(write(tmp_path / "d.csv", good), id_column="mrn")
    with pytest.raises(DataError, match="cannot read"):
        load(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        load(tmp_path / "empty.csv")


def test_an_optional_feature_the_site_does_not_record_is_imputed(tmp_path: Path) -> None:
    header = [name for name in HEADER if name != "kappa"]
    path = write(tmp_path / "cohort.csv", [["p1", "61", "F", "400", "1"]], header)
    data = load(path)
    assert data.n_valid == 1 and data.excluded == {}
    assert data.raw[0].tolist() == [61.0, 0.0, 1.0, 1.0]  # age, sex=M, kappa imputed, missing


def _cohort(n: int, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [
        [f"p{i}", str(int(rng.integers(40, 110))), "FM"[i % 2], "3", str(float(i + 1)), "1"]
        for i in range(n)
    ]


def _partition(data: LocalDataset) -> dict[float, bool]:
    """Patient (by its unique time) -> held out?"""
    return dict(zip(data.time.tolist(), data.holdout.tolist(), strict=True))


def test_the_split_is_a_keyed_hash_of_each_patient_alone(tmp_path: Path) -> None:
    rows = _cohort(1000)
    reference = _partition(load(write(tmp_path / "a.csv", rows)))
    assert 150 <= sum(reference.values()) <= 250  # holdout_fraction 0.2
    # The same patient is in the same partition however the export is ordered or cut.
    shuffled = [rows[i] for i in np.random.default_rng(1).permutation(len(rows))]
    assert _partition(load(write(tmp_path / "b.csv", shuffled))) == reference
    fewer = rows[::3]
    subset = _partition(load(write(tmp_path / "c.csv", fewer)))
    assert subset == {t: reference[t] for t in subset}
    # Another salt is another split.
    other = _partition(load(write(tmp_path / "d.csv", rows), split_salt="another-salt-entirely"))
    assert other != reference


def test_without_an_id_column_the_key_is_the_row_content(tmp_path: Path) -> None:
    rows = _cohort(300)
    reference = _partition(load(write(tmp_path / "a.csv", rows), id_column=None))
    order = [5, 3, 1, 0, 2, 4]  # the same columns in another order
    moved = [[row[i] for i in order] for row in rows]
    header = [HEADER[i] for i in order]
    again = load(write(tmp_path / "b.csv", moved, header), id_column=None)
    assert _partition(again) == reference
