"""What a site's data looks like to a plan: counts a hospital's data team can act on.

Built while the cohort is read (`site_agent.data.load_local_data`), so the report describes
exactly the rows a run would use. Only counts and shares leave this module, never a patient's
value; counts below the site's small-cell threshold are shown as `<k` wherever they are printed
(`site_agent check`, the site log).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from survival.schema import CategoricalFeature, FeatureSchema

IMPUTED_WARNING_SHARE = 0.5
ALMOST_ALL_EVENTS = 0.95
OUTSIDE_GRID_WARNING_SHARE = 0.5


@dataclass
class FeatureQuality:
    """One consortium feature at this site."""

    name: str
    kind: str
    column: str | None
    """The local column read, or None: not recorded here (an optional feature, imputed)."""
    missing: int = 0
    imputed: int = 0
    clipped: int = 0
    levels: dict[str, int] | None = None
    """Rows read per declared level (categorical features), whatever else excluded them."""
    unknown_levels: dict[str, int] = field(default_factory=dict)
    """Local values no level or value map covers, with the rows they excluded."""


@dataclass
class DataQuality:
    """The data-quality report of one cohort read for one plan."""

    rows_read: int
    rows_valid: int
    excluded: dict[str, int]
    features: list[FeatureQuality]
    events: int
    followup: dict[str, float]
    """Follow-up in the plan's time unit: median, min, max (of valid rows)."""
    time_unit: str
    beyond_horizon: int
    """Valid rows followed past the plan's last cut (censored there: fine, unless most are)."""
    train_rows: int
    holdout_rows: int
    warnings: list[str] = field(default_factory=list)

    @property
    def event_rate(self) -> float:
        """Events per valid row: near 0 or 1 usually means a misread event coding."""
        return self.events / self.rows_valid if self.rows_valid else 0.0

    def to_json(self, small_cell: int) -> dict[str, Any]:
        """The report as JSON, with counts below `small_cell` replaced by "<k"."""

        def cell(n: int) -> int | str:
            return f"<{small_cell}" if 0 < n < small_cell else n

        return {
            "rows_read": self.rows_read,
            "rows_valid": self.rows_valid,
            "excluded": {reason: cell(n) for reason, n in sorted(self.excluded.items())},
            "features": [
                {
                    "name": f.name,
                    "kind": f.kind,
                    "column": f.column,
                    "missing_share": _share(f.missing, self.rows_read),
                    "imputed_share": _share(f.imputed, self.rows_valid),
                    "clipped_share": _share(f.clipped, self.rows_valid),
                    "levels": None
                    if f.levels is None
                    else {level: cell(n) for level, n in f.levels.items()},
                    "unknown_levels": shown_values(f.unknown_levels, small_cell),
                }
                for f in self.features
            ],
            "events": cell(self.events),
            "event_rate": round(self.event_rate, 4),
            "followup": {k: round(v, 2) for k, v in self.followup.items()},
            "time_unit": self.time_unit,
            "beyond_horizon": cell(self.beyond_horizon),
            "holdout": {"train": self.train_rows, "holdout": self.holdout_rows},
            "warnings": list(self.warnings),
        }


def shown_values(counts: dict[str, int], small_cell: int) -> dict[str, int]:
    """Local values seen at least `small_cell` times; rarer ones only as a count of values (a
    value seen once can identify a patient, e.g. a name in a mis-mapped column)."""
    shown = {value: n for value, n in sorted(counts.items()) if n >= small_cell}
    rare = len(counts) - len(shown)
    if rare:
        shown[f"({rare} other value(s), each seen < {small_cell} times)"] = sum(
            n for n in counts.values() if n < small_cell
        )
    return shown


def _share(n: int, total: int) -> float:
    return round(n / total, 4) if total else 0.0


def followup_summary(time: np.ndarray) -> dict[str, float]:
    """Median, min and max follow-up (0s for an empty cohort)."""
    if time.size == 0:
        return {"median": 0.0, "min": 0.0, "max": 0.0}
    return {
        "median": float(np.median(time)),
        "min": float(time.min()),
        "max": float(time.max()),
    }


def values_table(feature: str) -> str:
    """The TOML table that maps `feature`'s values (quoted when the name has a dot)."""
    return f'[data.values."{feature}"]' if "." in feature else f"[data.values.{feature}]"


EVENT_CODING_SHARE = 0.05
"""More rows than this with an event value the coding does not name: refuse (a misread)."""


def data_refusals(report: DataQuality) -> list[str]:
    """Problems that make the data unusable for any plan: a wrong event coding reads censored
    patients as deaths (an R export under the default 1 = event), so it refuses, not warns."""
    reasons: list[str] = []
    unknown = report.excluded.get(
        "event: value in neither data.event_values nor data.censored_values", 0
    )
    if report.rows_read and unknown > EVENT_CODING_SHARE * report.rows_read:
        reasons.append(
            f"data: {unknown} of {report.rows_read} rows have an event value in neither"
            " data.event_values nor data.censored_values (set both: R exports use 1 = censored,"
            " 2 = event)"
        )
    return reasons


def quality_warnings(report: DataQuality, horizon: float | None, small_cell: int) -> list[str]:
    """What usually means a misread rather than a real cohort (shown by `check`, logged on
    accepting a plan); each names the likely cause and the setting that fixes it."""
    warnings: list[str] = []
    valid = report.rows_valid
    if valid and report.events == 0:
        warnings.append(
            "no events among the valid rows: check data.event_values (which values mean the"
            " event happened)"
        )
    elif valid and report.event_rate >= ALMOST_ALL_EVENTS:
        warnings.append(
            f"{report.event_rate:.0%} of valid rows are events: likely inverted coding (R exports"
            " use 1 = censored, 2 = event); check data.event_values and data.censored_values"
        )
    if horizon is None:
        pass  # no plan: no grid to compare the follow-up with
    elif valid and report.followup["median"] > horizon:
        warnings.append(
            f"median follow-up {report.followup['median']:.4g} {report.time_unit} is beyond the"
            f" plan's horizon {horizon:g}: likely a unit mismatch; check data.time_unit"
        )
    elif valid and report.followup["max"] < horizon / 20:
        warnings.append(
            f"all follow-up is below {horizon / 20:.4g} {report.time_unit} (a twentieth of the"
            " plan's horizon): likely a unit mismatch; check data.time_unit"
        )
    for feature in report.features:
        if valid and feature.imputed > IMPUTED_WARNING_SHARE * valid:
            where = (
                "its column is not in the export"
                if feature.column is None
                else f"column {feature.column!r} is mostly empty"
            )
            warnings.append(
                f"feature {feature.name!r} is imputed for {feature.imputed / valid:.0%} of rows:"
                f" {where}; map it in [data.columns] if the site records it"
            )
        if feature.levels is not None:
            unseen = [level for level, n in feature.levels.items() if n == 0]
            if unseen:
                warnings.append(
                    f"feature {feature.name!r}: level(s) {unseen} never seen; if the export"
                    f" spells them differently, add {values_table(feature.name)}"
                )
        if feature.unknown_levels:
            shown = list(shown_values(feature.unknown_levels, small_cell))[:5]
            warnings.append(
                f"feature {feature.name!r}: values {shown} match no declared level; map them in"
                f" {values_table(feature.name)}"
            )
    return warnings


class Cohort(Protocol):
    """What the report needs of a loaded cohort (site_agent.data.LocalDataset)."""

    n_rows: int
    excluded: dict[str, int]
    time: np.ndarray
    event: np.ndarray

    @property
    def n_valid(self) -> int: ...
    @property
    def n_train(self) -> int: ...
    @property
    def n_holdout(self) -> int: ...


def build_quality(
    schema: FeatureSchema,
    dataset: Cohort,
    columns: dict[str, list[str]],
    local_columns: dict[str, str | None],
    unknown: dict[str, Counter[str]],
    clipped: dict[str, int],
    valid: np.ndarray,
    time_unit: str,
) -> DataQuality:
    """Counts per feature (missing, imputed, clipped, levels) over the rows read and kept."""
    features = []
    for feature in schema.features:
        cells = columns.get(feature.name)
        if cells is None:
            missing = imputed = dataset.n_valid
        else:
            missing = sum(1 for c in cells if c == "")
            imputed = (
                0
                if feature.required
                else sum(1 for c, keep in zip(cells, valid, strict=True) if keep and c == "")
            )
        levels = None
        if isinstance(feature, CategoricalFeature):
            counts = Counter(c for c in cells or [] if c != "")
            levels = {level: counts.get(level, 0) for level in feature.levels}
        features.append(
            FeatureQuality(
                name=feature.name,
                kind=feature.kind,
                column=local_columns.get(feature.name),
                missing=missing,
                imputed=imputed,
                clipped=clipped.get(feature.name, 0),
                levels=levels,
                unknown_levels=dict(unknown.get(feature.name, {})),
            )
        )
    return DataQuality(
        rows_read=dataset.n_rows,
        rows_valid=dataset.n_valid,
        excluded=dict(dataset.excluded),
        features=features,
        events=int(dataset.event.sum()),
        followup=followup_summary(dataset.time),
        time_unit=time_unit,
        beyond_horizon=0,
        train_rows=dataset.n_train,
        holdout_rows=dataset.n_holdout,
    )
