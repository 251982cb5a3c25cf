"""Reading a hospital's spellings: value maps, missing values, event codes, units, delimiters."""

from __future__ import annotations

import pytest

from site_agent.mapping import (
    EventCoding,
    MappingError,
    ValueMap,
    canonical,
    is_missing,
    sniff_delimiter,
    time_factor,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1.0", "1"), (" 1 ", "1"), ("01", "1"), ("2.50", "2.50"), ("M", "M"), ("-3.0", "-3")],
)
def test_numbers_compare_by_value(text: str, expected: str) -> None:
    assert canonical(text) == expected


def test_value_map_recodes_every_listed_spelling_and_leaves_the_rest() -> None:
    sex = ValueMap.build("sex", {"F": ["F", "f", "2", "female"], "M": ["M", "m", "1.0"]})
    assert [sex.apply(v) for v in ["f", "2.0", " female", "1", "M"]] == ["F", "F", "F", "M", "M"]
    assert sex.apply("X") == "X"  # never a guess: the schema counts it as an unknown level


def test_one_spelling_cannot_mean_two_values() -> None:
    with pytest.raises(MappingError, match=r"data.values.sex: '1.0' maps to both 'F' and 'M'"):
        ValueMap.build("sex", {"F": ["1"], "M": ["1.0"]})


def test_r_style_event_coding() -> None:
    r_style = EventCoding(event_values=("2",), censored_values=("1",))
    assert [r_style.decode(v) for v in ["1", "2", "2.0", "0", "dead"]] == [0, 1, 1, None, None]
    default = EventCoding()
    assert default.decode("2") is None  # an R export under the default coding: excluded, counted


def test_event_and_censored_values_must_not_overlap() -> None:
    with pytest.raises(MappingError, match="share"):
        EventCoding(event_values=("1",), censored_values=("1.0",))


def test_missing_spellings() -> None:
    na = ("", "NA", ".")
    assert [is_missing(v, na) for v in ["NA", " . ", "", "0", "na"]] == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_time_units_convert_to_the_plans() -> None:
    assert time_factor("days", "days") == 1.0
    assert time_factor("months", "days") == pytest.approx(30.4375)
    assert time_factor("years", "months") == pytest.approx(12.0)
    assert time_factor("weeks", "days") == 7.0


@pytest.mark.parametrize(
    ("sample", "delimiter"),
    [
        ("a,b,c\n1,2,3\n", ","),
        ("a;b;c\n1,5;2;3\n", ";"),
        ("a\tb\tc\n1\t2\t3\n", "\t"),
        ("single\n1\n", None),
    ],
)
def test_sniffed_delimiter(sample: str, delimiter: str | None) -> None:
    assert sniff_delimiter(sample) == delimiter
