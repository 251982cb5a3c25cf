"""The data audit of `site_agent check`: what kind of personal data each column of the export is.

Every column, mapped or not, is classified from its header and from value patterns on a bounded
sample (the first `SAMPLE_ROWS` rows) as a **direct identifier** (names, e-mail, phone, national /
insurance numbers, medical record numbers, addresses, full dates of birth), a **quasi-identifier**
(age, sex, postcode, dates, ethnicity / race), **special-category** health data, or **other**.
Reading every column is done here, in `check` only, never in a run: the agent's loader reads the
columns the plan maps and nothing else (site_agent/data.py). No cell value is ever printed: a
classification names its reason (the header, or the pattern the values match), never a value.

For the plan's quasi-identifiers, `k_anonymity` reports k (the smallest equivalence class over
the QIs as the model sees them: numeric QIs banded into `BANDS` equal bands between the plan's
public bounds, categoricals by level) and l (the fewest distinct event values in a class). A plan
with a `[privacy.k_anonymity]` layer is measured on the rows the layer leaves instead
(site_agent/anonymity.py): its own bands and hierarchies, after suppression.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from site_agent.config import DataConfig
from site_agent.mapping import is_missing, sniff_delimiter
from survival.schema import FeatureSchema, NumericFeature

SAMPLE_ROWS = 1000
"""Rows sampled per column to classify it by its values (check only)."""
BANDS = 10
"""Equal-width bands between a numeric quasi-identifier's public bounds, for k-anonymity."""
VALUE_SHARE = 0.5
"""A column is classified by a value pattern when at least this share of its sample matches."""

Kind = Literal["direct_identifier", "quasi_identifier", "special_category", "other"]


@dataclass(frozen=True)
class Classification:
    kind: Kind
    why: str
    """The reason, from the header or a value pattern; never a value."""


def _norm(header: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", header.lower()).strip("_")


_T = r"(^|_)"
_E = r"($|_)"
_DIRECT_HEADERS: tuple[tuple[str, str], ...] = (
    (rf"{_T}(date_of_birth|birth_?date|dob|birthday|geburtsdatum|born){_E}", "a date of birth"),
    (rf"{_T}(e_?mail|mail){_E}", "an e-mail address"),
    (rf"{_T}(phone|telephone|tel|mobile|cell_phone|fax){_E}", "a phone number"),
    (
        rf"{_T}(ssn|social_security|nhs|nhs_number|national_id|national_number|nin|bsn|insee|"
        rf"insurance|insurance_number|passport|tax_id|personal_number|personnummer){_E}",
        "a national or insurance number",
    ),
    (
        rf"{_T}(mrn|medical_record|record_number|hospital_number|patient_id|patientid|"
        rf"patient_number|case_number|chart_number|pid){_E}",
        "a medical record number or patient id",
    ),
    (
        r"^(patient_|pat_|person_)?(name|names|first_?name|last_?name|surname|given_?names?|"
        r"full_?name|family_name|maiden_name|initials|vorname|nachname|nom|prenom)$",
        "a person's name",
    ),
    (rf"{_T}(address|street|house_number|addr){_E}", "an address"),
    (rf"{_T}(ip|ip_address|device_id|iban|account_number){_E}", "an online or account id"),
)
_QUASI_HEADERS: tuple[tuple[str, str], ...] = (
    (rf"{_T}age(s|_years|_at_[a-z0-9_]+)?{_E}", "an age"),
    (rf"{_T}(sex|gender){_E}", "sex or gender"),
    (rf"{_T}(zip|zip_code|postcode|post_code|postal_code|plz|cap){_E}", "a postcode"),
    (rf"{_T}(ethnicity|ethnic|race|nationality|country_of_birth){_E}", "ethnicity or race"),
    (rf"{_T}(city|town|municipality|region|county|state|district){_E}", "a place"),
    (rf"{_T}(date|dt|yr|year|month|admission|discharge|visit){_E}", "a date or year"),
    (rf"{_T}(marital|occupation|profession|employer){_E}", "a social attribute"),
)
_HEALTH_HEADERS = (
    rf"{_T}(diag\w*|icd\w*|disease|stage|grade|tumou?r\w*|lab|blood|serum|creat\w*|bmi|"
    r"weight|height|drug|medication|treatment|therapy|surgery|flc\w*|kappa\w*|lambda\w*|mgus\w*|"
    r"hiv|hba1c|glucose|cholesterol|pressure|smok\w*|died|death\w*|deceased|vital\w*|event|"
    rf"status|futime\w*|follow\w*|fu_days|days_observed|survival|relapse|mortality){_E}"
)
_VALUE_PATTERNS: tuple[tuple[re.Pattern[str], Kind, str], ...] = (
    (re.compile(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$", re.I), "direct_identifier", "e-mail addresses"),
    (re.compile(r"^\d{3}-\d{2}-\d{4}$"), "direct_identifier", "US social security numbers"),
    (re.compile(r"^\d{3} \d{3} \d{4}$"), "direct_identifier", "NHS-style numbers"),
    (
        re.compile(r"^(\+|00)\d[\d ()./-]{7,18}\d$|^0\d{2,4}[ /-]\d{3,}[ -]?\d*$"),
        "direct_identifier",
        "phone numbers",
    ),
    (
        re.compile(r"^[A-Z][a-z]+(?:[-' ][A-Z][a-z]+)*, [A-Z][a-z]+(?:[- ][A-Z][a-z]+)*$"),
        "direct_identifier",
        "person names (Last, First)",
    ),
    (
        re.compile(r"^\d+[a-z]? [A-Z][a-z]+ (street|st|road|rd|avenue|ave|lane|ln)\.?$", re.I),
        "direct_identifier",
        "street addresses",
    ),
    (re.compile(r"^[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}$", re.I), "quasi_identifier", "UK postcodes"),
    (
        re.compile(r"^\d{4}-\d{2}-\d{2}([ T].*)?$|^\d{1,2}[./]\d{1,2}[./]\d{4}$"),
        "quasi_identifier",
        "full dates",
    ),
)
_RECORD_NUMBER = re.compile(r"^(?=.*\d)[A-Za-z0-9][A-Za-z0-9/_-]{4,}$")


def _by_header(header: str) -> Classification | None:
    name = _norm(header)
    for pattern, why in _DIRECT_HEADERS:
        if re.search(pattern, name):
            return Classification("direct_identifier", f"the header looks like {why}")
    for pattern, why in _QUASI_HEADERS:
        if re.search(pattern, name):
            return Classification("quasi_identifier", f"the header looks like {why}")
    if re.search(_HEALTH_HEADERS, name):
        return Classification("special_category", "the header looks like health data")
    return None


def _by_values(sample: Sequence[str]) -> Classification | None:
    if not sample:
        return None
    for pattern, kind, why in _VALUE_PATTERNS:
        if sum(1 for v in sample if pattern.match(v)) >= VALUE_SHARE * len(sample):
            return Classification(kind, f"the values look like {why}")
    unique = len(set(sample)) / len(sample)
    coded = sum(1 for v in sample if _RECORD_NUMBER.match(v) and not _is_number(v, 5))
    if len(sample) >= 20 and unique >= 0.95 and coded >= VALUE_SHARE * len(sample):
        return Classification("direct_identifier", "the values are unique per row codes")
    return None


def _is_number(text: str, max_digits: int) -> bool:
    """A plain number (a measurement), not a long digit code such as a record number."""
    try:
        float(text)
    except ValueError:
        return False
    digits = sum(c.isdigit() for c in text)
    return "." in text or "e" in text.lower() or digits <= max_digits


def classify(header: str, sample: Sequence[str], na: Sequence[str] = ()) -> Classification:
    """A column's class from its header, then its values (a direct-identifier match by either
    wins over a weaker class; a date in a date-of-birth column is a direct identifier)."""
    values = [v.strip() for v in sample if not is_missing(v, tuple(na))]
    by_header = _by_header(header)
    by_values = _by_values(values)
    for found in (by_header, by_values):
        if found is not None and found.kind == "direct_identifier":
            return found
    return by_header or by_values or Classification("other", "no identifying header or values")


def direct_identifier(header: str, sample: Sequence[str], na: Sequence[str] = ()) -> str | None:
    """Why the column is a direct identifier, or None (the plan-offer check on mapped columns)."""
    found = classify(header, sample, na)
    return found.why if found.kind == "direct_identifier" else None


def read_sample(config: DataConfig) -> tuple[list[str], list[list[str]]]:
    """The header and the first SAMPLE_ROWS rows of every column, for `check` only (a run
    never calls this). Errors are left to the loader, which `check` runs first."""
    with config.csv.open(newline="", encoding=config.encoding) as handle:
        delimiter = config.delimiter or sniff_delimiter(handle.read(65_536)) or ","
        handle.seek(0)
        reader = csv.reader(handle, delimiter=delimiter)
        header = [name.strip() for name in next(reader, [])]
        columns: list[list[str]] = [[] for _ in header]
        for n, row in enumerate(reader):
            if n >= SAMPLE_ROWS:
                break
            if len(row) == len(header):
                for column, cell in zip(columns, row, strict=True):
                    column.append(cell)
    return header, columns


def audit_columns(config: DataConfig, used: dict[str, str]) -> dict[str, dict[str, str | None]]:
    """Every column → {class, why, used_by_plan}; `used` maps local column → its use."""
    header, columns = read_sample(config)
    out: dict[str, dict[str, str | None]] = {}
    for name, sample in zip(header, columns, strict=True):
        use = used.get(name)
        found = classify(name, sample, config.na_values)
        if use in ("time", "event") and found.kind in ("other", "quasi_identifier"):
            found = Classification("special_category", "the survival outcome is health data")
        elif use is not None and use.startswith("feature ") and found.kind == "other":
            found = Classification("special_category", "a model feature of a patient cohort")
        out[name] = {"class": found.kind, "why": found.why, "used_by_plan": use}
    return out


def k_anonymity(
    schema: FeatureSchema, raw: np.ndarray, event: np.ndarray, quasi: Sequence[str]
) -> dict[str, object]:
    """k and l over the plan's quasi-identifier features as the model sees them (`raw` is the
    design matrix of the valid rows, `FeatureSchema.raw_matrix` layout)."""
    if not quasi or raw.shape[0] == 0:
        return {"k": None, "l": None, "quasi_identifiers": list(quasi), "classes": 0}
    blocks: list[np.ndarray] = []
    start = 0
    for feature in schema.features:
        width = len(feature.encoded_names())
        block = raw[:, start : start + width]
        start += width
        if feature.name not in quasi:
            continue
        if isinstance(feature, NumericFeature):
            span = feature.max - feature.min
            band = np.floor((block[:, :1] - feature.min) / span * BANDS).clip(0, BANDS - 1)
            block = np.concatenate([band, block[:, 1:]], axis=1)
        blocks.append(block)
    keys = [tuple(row) for row in np.concatenate(blocks, axis=1).round(9).tolist()]
    summary = class_summary(keys, event)
    return {
        "k": summary.k,
        "l": summary.l,
        "quasi_identifiers": list(quasi),
        "classes": summary.classes,
    }


@dataclass(frozen=True)
class ClassSummary:
    """k (the smallest equivalence class), l (the fewest distinct event values in a class) and
    the number of classes; k and l are None when there is no row."""

    k: int | None
    l: int | None  # noqa: E741 - l-diversity's own letter
    classes: int


def class_summary(keys: Sequence[Hashable], event: np.ndarray) -> ClassSummary:
    """k, l and the class count of rows already keyed by their equivalence class (the layer of
    site_agent/anonymity.py measures its generalised rows with this too)."""
    sizes = Counter(keys)
    if not sizes:
        return ClassSummary(None, None, 0)
    events: dict[Hashable, set[int]] = {}
    for key, value in zip(keys, event.tolist(), strict=True):
        events.setdefault(key, set()).add(int(value))
    return ClassSummary(min(sizes.values()), min(len(v) for v in events.values()), len(sizes))
