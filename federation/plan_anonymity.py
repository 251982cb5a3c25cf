"""The plan's optional k-anonymity layer: `[privacy.k_anonymity]`.

A site with this section generalises the listed quasi-identifiers before any release is computed
(site_agent/anonymity.py) and suppresses the rows still in an equivalence class smaller than `k`.
Everything here is public and *fixed by the plan*, never by the data: a numeric quasi-identifier
is cut into bands between the feature's own public bounds (`bands` equal-width bands, or the
explicit cut points of `cuts`), and a categorical one is mapped through the declared hierarchy
(`hierarchies.<feature>`: level → generalised label). A generalisation chosen from the data (the
Mondrian or Incognito searches) would itself depend on the patients; a declared one does not.

This module takes the plan's features as an argument (`check_layer`) rather than importing
`federation.plan`, which imports it.
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from survival.schema import CategoricalFeature, Feature, NumericFeature

MAX_BANDS = 1000
"""More bands than this is no generalisation worth declaring."""


class KAnonymityPlan(BaseModel):
    """k-anonymity of the quasi-identifiers the model sees, enforced at each site before any
    release (docs/gdpr.md, "k-anonymity"): numeric quasi-identifiers are replaced by the midpoint
    of their public band, categorical ones by their hierarchy group, and the rows still in a class
    smaller than k are suppressed. It limits linkage through these columns; it is no substitute
    for the DP guarantee, and since suppression makes the rows a run reads depend on the other
    patients, against the whole export that guarantee is group privacy over up to k patients."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: int = Field(
        ge=2,
        le=100_000,
        description="the smallest equivalence class over the quasi-identifiers a site keeps",
    )
    quasi_identifiers: list[str] = Field(
        min_length=1,
        description="plan feature names whose combination could link a row to a person",
    )
    bands: int = Field(
        default=5,
        ge=1,
        le=MAX_BANDS,
        description=(
            "equal-width bands between each numeric quasi-identifier's plan bounds (min, max),"
            " unless `cuts` lists that feature; never derived from the data"
        ),
    )
    cuts: dict[str, list[float]] = Field(
        default={},
        description=(
            "[privacy.k_anonymity.cuts] feature = [public interior cut points], strictly"
            " increasing and strictly inside the feature's bounds; replaces `bands` for it"
        ),
    )
    hierarchies: dict[str, dict[str, str]] = Field(
        default={},
        description=(
            "[privacy.k_anonymity.hierarchies.<feature>] level = generalised label; a level not"
            " listed keeps its own label. All levels of one label are encoded as the group's"
            " first level in the feature's declared order (the other levels' dummies stay 0)"
        ),
    )

    @field_validator("quasi_identifiers")
    @classmethod
    def _distinct(cls, names: list[str]) -> list[str]:
        doubled = sorted({name for name in names if names.count(name) > 1})
        if doubled:
            raise ValueError(f"quasi_identifiers lists {doubled} more than once")
        return names

    @field_validator("cuts")
    @classmethod
    def _increasing(cls, cuts: dict[str, list[float]]) -> dict[str, list[float]]:
        for name, points in cuts.items():
            if not points:
                raise ValueError(f"cuts.{name} is empty: leave it out to use `bands`")
            if not all(math.isfinite(p) for p in points):
                raise ValueError(f"cuts.{name}: cut points must be finite")
            if any(b <= a for a, b in itertools.pairwise(points)):
                raise ValueError(f"cuts.{name}: cut points must be strictly increasing")
        return cuts


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_layer(layer: KAnonymityPlan, features: Sequence[Feature]) -> None:
    """Raise ValueError naming the first problem between the layer and the plan's features: an
    unknown quasi-identifier (with the nearest feature name), cuts or a hierarchy for a feature
    that is not a quasi-identifier of the right kind, cut points outside the bounds, a hierarchy
    level the feature does not declare. One message, no "; " (which separates plan errors)."""
    by_name = {feature.name: feature for feature in features}
    where = "privacy.k_anonymity"
    for name in layer.quasi_identifiers:
        if name not in by_name:
            raise ValueError(
                f"{where}.quasi_identifiers: {name!r} is not a plan feature"
                f"{_suggest(name, list(by_name))}: list the [[features]] names whose"
                " combination could identify a patient"
            )
    quasi = set(layer.quasi_identifiers)
    for name, points in layer.cuts.items():
        feature = by_name.get(name)
        if name not in quasi or not isinstance(feature, NumericFeature):
            raise ValueError(
                f"{where}.cuts.{name}: not a numeric quasi-identifier of this plan"
                f"{_suggest(name, sorted(quasi))}: cut points apply only to a numeric feature"
                " listed in quasi_identifiers"
            )
        if points[0] <= feature.min or points[-1] >= feature.max:
            raise ValueError(
                f"{where}.cuts.{name}: cut points must lie strictly inside the feature's bounds"
                f" {feature.bounds_text()}"
            )
    for name, mapping in layer.hierarchies.items():
        feature = by_name.get(name)
        if name not in quasi or not isinstance(feature, CategoricalFeature):
            raise ValueError(
                f"{where}.hierarchies.{name}: not a categorical quasi-identifier of this plan"
                f"{_suggest(name, sorted(quasi))}: a hierarchy applies only to a categorical"
                " feature listed in quasi_identifiers"
            )
        for level, label in mapping.items():
            if level not in feature.levels:
                raise ValueError(
                    f"{where}.hierarchies.{name}: {level!r} is not a level of feature {name!r}"
                    f"{_suggest(level, feature.levels)}: its levels are {feature.levels}"
                )
            if not label.strip():
                raise ValueError(
                    f"{where}.hierarchies.{name}.{level}: the generalised label is empty"
                )
