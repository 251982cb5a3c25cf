"""`[data]` of site.toml: where the hospital's export is and how to read its spellings.

Kept apart from the rest of the site configuration (site_agent/config.py, which composes it into
`SiteConfig`) because it is the data team's part of the file: the CSV, its columns, its value
codes, units and missing-value spellings, the patient id and consent columns, and the secret
split salt. docs/site-config.md documents every key.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from site_agent.mapping import DEFAULT_NA_VALUES, EventCoding, MappingError, TimeUnit, ValueMap


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """The local CSV and how its columns map to the consortium's names."""

    csv: Path
    columns: dict[str, str] = Field(default_factory=dict)
    """Consortium feature name -> local column name; a feature not listed uses its own name."""
    time_column: str = Field(default="time", min_length=1)
    event_column: str = Field(default="event", min_length=1)
    id_column: str | None = None
    """The patient id column (`patient_id_column`; `id_column` is its older name): the stable key
    of the held-out split, pseudonymised at load (HMAC-SHA256 under the site's secret) and never
    kept raw. None: the split key is a hash of the row's content (and erasure is impossible)."""
    consent_column: str | None = None
    """A column recording consent; a row whose value is not in `consent_values` is excluded."""
    consent_values: list[str] = Field(
        default_factory=lambda: ["yes", "y", "true", "1"], min_length=1
    )
    """Values of `consent_column` that mean consent was given (case-insensitive)."""
    consent_registry: Path | None = None
    """A CSV of consent decisions (patient, purpose, status granted|withdrawn, date); the latest
    entry per patient and purpose wins; a patient without a granted entry is excluded."""
    holdout_fraction: float = Field(default=0.2, gt=0.0, lt=0.9)
    """The site's own, fixed for its ledger's life (a plan cannot change it: a different split
    between runs would void the parallel composition of the training and held-out ε)."""
    split_salt: str = Field(min_length=16, repr=False)
    """Secret key of the held-out split (HMAC); fixed for the life of the privacy ledger."""
    delimiter: str | None = Field(default=None, min_length=1, max_length=1)
    """The CSV's field separator; None: sniffed from the header among , ; tab |."""
    encoding: str = "utf-8-sig"
    """Text encoding of the export (utf-8-sig also reads plain UTF-8)."""
    na_values: list[str] = Field(default_factory=lambda: list(DEFAULT_NA_VALUES))
    """Cell spellings that mean "not recorded" (an empty cell always does)."""
    time_unit: TimeUnit = "days"
    """Unit of the time column; converted to the plan's time_unit."""
    event_values: list[str] = Field(default_factory=lambda: ["1"], min_length=1)
    """Values of the event column meaning the event happened (compared by value: 1.0 is 1)."""
    censored_values: list[str] = Field(default_factory=lambda: ["0"], min_length=1)
    """Values meaning censored; any other value excludes the row, counted, never a guess."""
    values: dict[str, dict[str, list[str]]] = Field(default_factory=dict)
    """Per feature: consortium value -> the local spellings of it ([data.values.<feature>])."""

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, encoding: str) -> str:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(f"unknown text encoding {encoding!r}") from None
        return encoding

    @model_validator(mode="after")
    def _codings_are_consistent(self) -> DataConfig:
        try:
            EventCoding(tuple(self.event_values), tuple(self.censored_values))
            for feature, spellings in self.values.items():
                ValueMap.build(feature, spellings)
        except MappingError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def event_coding(self) -> EventCoding:
        """How the event column reads."""
        return EventCoding(tuple(self.event_values), tuple(self.censored_values))

    def value_map(self, feature: str) -> ValueMap | None:
        """The site's spellings of `feature`'s values, if it declared any."""
        spellings = self.values.get(feature)
        return None if spellings is None else ValueMap.build(feature, spellings)

    @model_validator(mode="before")
    @classmethod
    def _one_name_for_the_id(cls, data: Any) -> Any:
        """`patient_id_column` is the documented name, `id_column` the older one."""
        if not isinstance(data, dict) or "patient_id_column" not in data:
            return data
        if "id_column" in data:
            raise ValueError("set patient_id_column or id_column (its older name), not both")
        data = dict(data)
        data["id_column"] = data.pop("patient_id_column")
        return data

    @model_validator(mode="after")
    def _one_consent_source(self) -> DataConfig:
        if self.consent_column is not None and self.consent_registry is not None:
            raise ValueError("set consent_column or consent_registry, not both")
        if self.consent_registry is not None and self.id_column is None:
            raise ValueError("consent_registry needs patient_id_column (entries name a patient)")
        return self

    @property
    def patient_id_column(self) -> str | None:
        """The patient id column (stored under its older name `id_column`)."""
        return self.id_column

    @model_validator(mode="before")
    @classmethod
    def _time_event_in_columns(cls, data: Any) -> Any:
        """`time`/`event` may also be mapped in [data.columns] (older kits did); accept it."""
        if not isinstance(data, dict) or not isinstance(data.get("columns"), dict):
            return data
        data = dict(data)
        columns = dict(data["columns"])
        for name in ("time", "event"):
            if name in columns:
                local = columns.pop(name)
                given = data.get(f"{name}_column")
                if given is not None and given != local:
                    raise ValueError(
                        f"columns.{name} ({local!r}) contradicts {name}_column ({given!r})"
                    )
                data[f"{name}_column"] = local
        data["columns"] = columns
        return data

    @field_validator("columns")
    @classmethod
    def _non_empty_names(cls, columns: dict[str, str]) -> dict[str, str]:
        for name, local in columns.items():
            if not name.strip() or not local.strip():
                raise ValueError(f"empty column name in mapping {name!r} -> {local!r}")
        return columns

    def local_column(self, feature: str) -> str:
        """The CSV column holding consortium feature `feature`."""
        return self.columns.get(feature, feature)
