"""The hazard ratios of an exported linear model with their DP-noise intervals, for the model
card and the report (`federation/hazard_intervals.py` derives the intervals).

Kept apart from `fedctl.model_card`, which builds the card from the coordinator's JSON alone:
the ratios need the exported weights (`model.pt`, read through `survival.export.load_model`,
which loads torch), so they are added to a card only where an export folder exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from federation.hazard_intervals import IntervalUnavailable, hazard_ratio_intervals

__all__ = ["COVERS", "add_hazard_ratios", "hazard_ratio_table"]

COVERS = (
    "95% interval of the DP noise only (the spread of the coefficients over re-runs with fresh"
    " noise, derived from the public plan; conservative: it ignores that later steps pull noise"
    " back): not the sampling error, which the sites do not release"
)


def hazard_ratio_table(folder: Path) -> dict[str, Any]:
    """{"scale", "covers", "ratios": [{feature, ratio, lower, upper[, transform]}]} of the export
    in `folder` (`transform`: the plan's, for a feature the model sees transformed);
    without intervals (and saying why) when the plan's noise has no closed form; for an MLP,
    only a note: its effects vary with the patient and the time."""
    from survival.export import ExportError, load_model
    from survival.schema import NumericFeature

    try:
        model = load_model(folder)
    except ExportError as exc:
        return {"note": f"no hazard ratios: {exc}"}
    if model.spec.kind != "linear":
        return {
            "note": f"a {model.spec.kind} model has no hazard ratios: its feature effects vary"
            " with the patient and the time"
        }
    table: dict[str, Any] = {"scale": "hazard-odds ratio exp(β) per consortium SD of the feature"}
    # a feature the plan transforms is modelled as its transform: say so on its row
    transforms = {
        f.name: f.transform
        for f in model.feature_schema.features
        if isinstance(f, NumericFeature) and f.transform != "none"
    }
    try:
        rows = hazard_ratio_intervals(model)
    except IntervalUnavailable as exc:
        ratios = model.hazard_ratios()
        table["covers"] = f"no interval: {exc}"
        table["ratios"] = [
            _with_transform({"feature": name, "ratio": value}, transforms)
            for name, value in ratios.items()
        ]
        return table
    table["covers"] = COVERS
    table["ratios"] = [
        _with_transform(
            {"feature": r.feature, "ratio": r.ratio, "lower": r.lower, "upper": r.upper},
            transforms,
        )
        for r in rows
    ]
    return table


def _with_transform(row: dict[str, Any], transforms: Mapping[str, str]) -> dict[str, Any]:
    """The row, naming the plan's transform of its feature (the ratio is per SD of log(1 + x))."""
    transform = transforms.get(str(row["feature"]))
    return row if transform is None else {**row, "transform": transform}


def add_hazard_ratios(mitchell: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The card's quantitative analyses with the export's hazard-ratio table; returns the table."""
    table = hazard_ratio_table(folder)
    mitchell.setdefault("quantitative_analyses", {})["hazard_ratios"] = table
    return table
