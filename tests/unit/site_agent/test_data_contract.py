"""The data contract: hospital exports as they really come, read right or refused with a count.

Each fixture is a CSV written the way a hospital system exports it. Each test states the exact
count or message, and that a misread is never silent: a value no mapping covers is an exclusion
reason or a warning, never a guess.
"""

from __future__ import annotations

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
            {"kind": "categorical", "name": "race", "levels": ["white", "black", "other"]},
            {"kind": "categorical", "name": "stage", "levels": ["1", "2", "3"]},
            {
                "kind": "numeric",
                "name": "creatinine",
                "min": 0.1,
                "max": 15,
                "required": False,
                "impute": 1.0,
            },
        ]
    }
)
HORIZON = 3650.0  # days


def export(tmp_path: Path, text: str, name: str = "export.csv") -> Path:
    path = tmp_path / name
    path.write_text(text.lstrip("\n"), encoding="utf-8")
    return path


def read(path: Path, **data: Any) -> LocalDataset:
    config = DataConfig(
        csv=path,
        time_column=data.pop("time_column", "futime"),
        event_column=data.pop("event_column", "status"),
        split_salt="a-secret-salt-of-this-site",
        **data,
    )
    return load_local_data(config, SCHEMA, time_unit="days", horizon=HORIZON)


SEMICOLON_R_STYLE = """
age;sex;race;stage;creatinine;futime;status
61;M;White;1.0;1,2;14.5;1
72;F;white;2;NA;30.0;2
55;F;Black;3;.;2.0;2
80;M;other;1;0.09999;60.0;1
67;F;WHITE;2;;12.25;1
"""
"""`;` delimiter, capitalised levels, "1.0" stages, NA and . for missing, months, R-style
events (1 = censored, 2 = dead), a creatinine stored as 0.09999 under a bound of 0.1, a decimal
comma (1,2) that is no number."""


def test_a_semicolon_export_with_its_mapping_reads_every_row(tmp_path: Path) -> None:
    path = export(tmp_path, SEMICOLON_R_STYLE)
    data = read(
        path,
        time_unit="months",
        event_values=["2"],
        censored_values=["1"],
        values={"race": {"white": ["White", "WHITE"], "black": ["Black"]}},
    )
    assert data.n_rows == 5 and data.excluded == {"creatinine: not a number": 1}
    assert data.n_valid == 4
    np.testing.assert_allclose(data.time, np.array([30.0, 2.0, 60.0, 12.25]) * 30.4375)
    assert data.event.tolist() == [1, 1, 0, 0]
    assert data.quality is not None
    feature = {f.name: f for f in data.quality.features}
    assert feature["creatinine"].clipped == 1 and feature["creatinine"].imputed == 3
    assert feature["race"].levels == {"white": 3, "black": 1, "other": 1}  # rows read
    assert feature["stage"].unknown_levels == {}  # "1.0" is the level "1"


def test_months_are_converted_to_the_plans_days(tmp_path: Path) -> None:
    path = export(tmp_path, SEMICOLON_R_STYLE)
    data = read(
        path,
        time_unit="months",
        event_values=["2"],
        censored_values=["1"],
        na_values=["NA", ".", "1,2"],
        values={"race": {"white": ["White", "WHITE"], "black": ["Black"]}},
    )
    assert data.n_valid == 5
    np.testing.assert_allclose(data.time, np.array([14.5, 30, 2, 60, 12.25]) * 30.4375)


def test_r_style_events_under_the_default_coding_are_never_read_as_deaths(
    tmp_path: Path,
) -> None:
    path = export(tmp_path, SEMICOLON_R_STYLE.replace("1,2", "1.2"))
    data = read(path, values={"race": {"white": ["White", "WHITE"], "black": ["Black"]}})
    # status 2 is neither an event (1) nor censored (0): excluded and counted, never a guess
    assert data.excluded == {
        "event: value in neither data.event_values nor data.censored_values": 2
    }
    assert data.event.tolist() == [1, 1, 1]
    assert data.quality is not None
    assert any("inverted coding" in w for w in data.quality.warnings)


def test_unmapped_spellings_are_counted_and_named_only_when_common(tmp_path: Path) -> None:
    rows = "".join(f"{60 + i % 9},{'F' if i % 2 else 'M'},White,1,,{100 + i},0\n" for i in range(7))
    rows += "70,M,Klingon,1,,300,1\n"
    path = export(tmp_path, "age,sex,race,stage,creatinine,futime,status\n" + rows)
    data = read(path)
    assert data.excluded == {"race: unknown level": 8}
    assert data.quality is not None
    race = next(f for f in data.quality.features if f.name == "race")
    assert race.unknown_levels == {"White": 7, "Klingon": 1}
    report = data.quality.to_json(small_cell=5)
    shown = next(f for f in report["features"] if f["name"] == "race")["unknown_levels"]
    assert "White" in shown and "Klingon" not in str(shown)  # a value seen once is not named
    assert any("[data.values.race]" in w for w in data.quality.warnings)


def test_sex_as_one_and_two_with_a_value_map(tmp_path: Path) -> None:
    path = export(
        tmp_path,
        "age,sex,race,stage,futime,status\n50,1,white,1,10,1\n60,2,white,2,20,0\n70,2.0,white,3,5,0\n",
    )
    assert read(path).excluded == {"sex: unknown level": 3}
    data = read(path, values={"sex": {"M": ["1"], "F": ["2"]}})
    assert data.n_valid == 3 and data.excluded == {}
    assert data.quality is not None
    sex = next(f for f in data.quality.features if f.name == "sex")
    assert sex.levels == {"F": 2, "M": 1}


def test_negative_times_and_out_of_bounds_ages(tmp_path: Path) -> None:
    path = export(
        tmp_path,
        "age,sex,race,stage,futime,status\n"
        "39.9,F,white,1,-3,1\n111,M,white,1,40,0\n50,F,white,2,-0.5,0\n",
    )
    data = read(path)
    assert data.excluded == {"time: negative": 2}
    assert data.n_valid == 1
    assert data.raw[0, 0] == 110.0  # clipped to the public bound, not excluded
    assert data.quality is not None
    age = next(f for f in data.quality.features if f.name == "age")
    assert age.clipped == 2


def test_a_wrong_delimiter_is_named_in_the_error(tmp_path: Path) -> None:
    path = export(tmp_path, "age;sex;race;stage;futime;status\n50;F;white;1;10;1\n")
    with pytest.raises(DataError) as info:
        read(path, delimiter=",")
    message = info.value.public
    assert "column 'futime' (data.time_column) is missing" in message
    assert "read as 1 column(s) with delimiter ','" in message
    assert str(path) not in message and str(path) in str(info.value)  # path stays at the site


def test_a_missing_column_names_the_setting(tmp_path: Path) -> None:
    path = export(tmp_path, "age,sex,race,futime,status\n50,F,white,10,1\n")
    with pytest.raises(DataError, match=r"column 'stage' \(feature 'stage'\) is missing"):
        read(path)


def test_all_censored_and_unit_mismatch_warnings(tmp_path: Path) -> None:
    rows = "".join(f"60,F,white,1,{20000 + i},0\n" for i in range(10))
    path = export(tmp_path, "age,sex,race,stage,futime,status\n" + rows)
    data = read(path)
    assert data.quality is not None
    warnings = " | ".join(data.quality.warnings)
    assert "no events among the valid rows" in warnings
    assert "beyond the plan's horizon 3650" in warnings and "data.time_unit" in warnings
    assert data.quality.beyond_horizon == 10


def test_an_optional_feature_absent_from_the_export_is_reported(tmp_path: Path) -> None:
    path = export(tmp_path, "age,sex,race,stage,futime,status\n50,F,white,1,10,1\n")
    data = read(path)
    assert data.quality is not None
    creatinine = next(f for f in data.quality.features if f.name == "creatinine")
    assert creatinine.column is None and creatinine.imputed == 1
    assert any("'creatinine' is imputed for 100% of rows" in w for w in data.quality.warnings)


def test_small_counts_are_shown_as_below_the_threshold(tmp_path: Path) -> None:
    path = export(
        tmp_path, "age,sex,race,stage,futime,status\n50,F,white,1,10,1\n50,M,white,1,10,1\n"
    )
    data = read(path)
    assert data.quality is not None
    report = data.quality.to_json(small_cell=5)
    sex = next(f for f in report["features"] if f["name"] == "sex")
    assert sex["levels"] == {"F": "<5", "M": "<5"}
    assert report["events"] == "<5"


def test_an_unmapped_r_style_event_column_is_refused_not_just_warned(tmp_path: Path) -> None:
    from site_agent.quality import data_refusals

    rows = "".join(f"60,F,white,1,{100 + i},{1 if i % 4 else 2}\n" for i in range(40))
    path = export(tmp_path, "age,sex,race,stage,futime,status\n" + rows)
    data = read(path)
    assert data.quality is not None
    refusals = data_refusals(data.quality)
    assert refusals == [
        "data: 10 of 40 rows have an event value in neither data.event_values nor"
        " data.censored_values (set both: R exports use 1 = censored, 2 = event)"
    ]
    mapped = read(path, event_values=["2"], censored_values=["1"])
    assert mapped.quality is not None and data_refusals(mapped.quality) == []


def test_a_dotted_feature_name_gets_a_quoted_values_table() -> None:
    from site_agent.quality import values_table

    assert values_table("flc.grp") == '[data.values."flc.grp"]'
    assert values_table("sex") == "[data.values.sex]"
