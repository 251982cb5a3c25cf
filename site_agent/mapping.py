"""How a hospital's export is read: delimiter, missing-value spellings, value codes, time units.

Hospitals export the same clinical facts in many spellings: `M`/`F` or `1`/`2` for sex, `NA` or
`.` for missing, R's `1 = censored, 2 = dead`, follow-up in months. `site.toml` says which
spelling this site uses; this module turns the site's cell text into the consortium's, and never
guesses: a value no mapping covers is an exclusion reason with a count, so a misread shows up in
`site_agent check` instead of silently becoming a death or a missing value.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

TimeUnit = Literal["days", "weeks", "months", "years"]
DAYS_PER_UNIT: dict[str, float] = {
    "days": 1.0,
    "weeks": 7.0,
    "months": 365.25 / 12.0,
    "years": 365.25,
}
DEFAULT_NA_VALUES = ("", "NA", "N/A", "NaN", "nan", "NULL", "null", ".", "?")
"""Missing-value spellings of R, SAS, Stata and most database exports."""
DELIMITERS = ",;\t|"


class MappingError(ValueError):
    """A mapping that cannot be used (two consortium values claim one local spelling)."""


def canonical(text: str) -> str:
    """The comparison form of a cell: stripped, and a number in its plain form (`1.0` is `1`)."""
    value = text.strip()
    try:
        number = float(value)
    except ValueError:
        return value
    if math.isfinite(number) and number.is_integer() and abs(number) < 2**53:
        return str(int(number))
    return value


def time_factor(site_unit: str, plan_unit: str) -> float:
    """Multiply a site's times by this to get them in the plan's unit."""
    return DAYS_PER_UNIT[site_unit] / DAYS_PER_UNIT[plan_unit]


def sniff_delimiter(sample: str) -> str | None:
    """The delimiter of a CSV sample's header, among `,;\\t|`; None if no candidate fits."""
    header = sample.splitlines()[0] if sample else ""
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        counts = {d: header.count(d) for d in DELIMITERS}
        best = max(counts, key=lambda d: counts[d])
        return best if counts[best] else None


@dataclass(frozen=True)
class ValueMap:
    """Local spellings → consortium value, for one column (compared in `canonical` form)."""

    column: str
    table: Mapping[str, str]

    @classmethod
    def build(cls, column: str, spellings: Mapping[str, Sequence[str]]) -> ValueMap:
        """From `consortium value = ["local", …]` as `[data.values.<feature>]` writes it."""
        table: dict[str, str] = {}
        for target, locals_ in spellings.items():
            for local in locals_:
                key = canonical(local)
                if key in table and table[key] != target:
                    raise MappingError(
                        f"data.values.{column}: {local!r} maps to both {table[key]!r} and"
                        f" {target!r}"
                    )
                table[key] = target
        return cls(column, table)

    def apply(self, text: str) -> str:
        """The consortium value of a cell; an unmapped cell is returned as it is (the schema
        then counts it as an unknown level, never a guess)."""
        return self.table.get(canonical(text), text)


@dataclass(frozen=True)
class EventCoding:
    """Which values of the event column mean "event" and which mean "censored"."""

    event_values: tuple[str, ...] = ("1",)
    censored_values: tuple[str, ...] = ("0",)

    def __post_init__(self) -> None:
        overlap = {canonical(v) for v in self.event_values} & {
            canonical(v) for v in self.censored_values
        }
        if overlap:
            raise MappingError(
                f"data.event_values and data.censored_values share {sorted(overlap)}"
            )

    def decode(self, text: str) -> int | None:
        """1 (event), 0 (censored), or None for a value neither list names (an exclusion)."""
        value = canonical(text)
        if value in {canonical(v) for v in self.event_values}:
            return 1
        if value in {canonical(v) for v in self.censored_values}:
            return 0
        return None


def is_missing(text: str, na_values: Sequence[str]) -> bool:
    """A cell this site writes for "not recorded"."""
    stripped = text.strip()
    return stripped == "" or stripped in na_values


def parse_times(
    values: list[str], na: tuple[str, ...], factor: float, reasons: Counter[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Follow-up times × `factor` (to the plan's unit), and which parsed; a missing, unreadable
    or negative time is counted by reason, never a guess."""
    out = np.full(len(values), np.nan)
    ok = np.zeros(len(values), dtype=bool)
    for i, text in enumerate(values):
        if is_missing(text, na):
            reasons["time: missing"] += 1
            continue
        try:
            value = float(text.strip())
        except ValueError:
            reasons["time: not a number"] += 1
            continue
        if not math.isfinite(value):
            reasons["time: not a number"] += 1
        elif value < 0:
            reasons["time: negative"] += 1
        else:
            out[i], ok[i] = value * factor, True
    return out, ok


def parse_events(
    values: list[str], na: tuple[str, ...], coding: EventCoding, reasons: Counter[str]
) -> tuple[np.ndarray, np.ndarray]:
    """1 (event) / 0 (censored) per row under the site's coding, and which decoded; any other
    value is counted, never guessed."""
    out = np.zeros(len(values), dtype=np.int64)
    ok = np.zeros(len(values), dtype=bool)
    for i, text in enumerate(values):
        if is_missing(text, na):
            reasons["event: missing"] += 1
            continue
        value = coding.decode(text)
        if value is None:
            reasons["event: value in neither data.event_values nor data.censored_values"] += 1
        else:
            out[i], ok[i] = value, True
    return out, ok
