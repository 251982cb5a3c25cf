"""The plan's `[evaluation]` table: which subgroups and which feature importances the final
evaluation releases, and how a row is put into a subgroup.

A hospital board asks whether a model works as well for women as for men, for the old as for the
young: the plan may name subgroup features, and the final model's evaluation then releases one
block of the metric sufficient statistics per subgroup level (`federation/evaluation_release.py`).
The subgroups must be public before any data is seen, so that every site and the coordinator
agree on the blocks from the plan alone and the bands leak nothing:

- a categorical feature is split by its declared levels;
- a numeric feature by the cut points declared in `cuts`, or else at the midpoint of its public
  bounds [min, max] — never at a quantile of the data;
- an optional feature's missing values form one more level, `missing`.

`importance = true` adds one block per feature computed with that feature permuted within each
site's held-out rows (permutation importance: the consortium's ΔC per feature is the difference of
two secure sums). Both are checked against the plan's features here, with a did-you-mean for a
misspelt name, through an `AfterValidator` that reads the already validated `features`.
"""

from __future__ import annotations

import difflib
import itertools
import math
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo

from survival.schema import CategoricalFeature, FeatureSchema, NumericFeature

MAX_SUBGROUP_FEATURES = 4
MAX_LEVELS = 12
MISSING_LEVEL = "missing"


class EvaluationPlan(BaseModel):
    """Subgroup and importance blocks of the final evaluation (docs/model.md, "Subgroups")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    subgroups: list[str] = Field(
        default=[],
        max_length=MAX_SUBGROUP_FEATURES,
        description=(
            "features whose levels (categorical) or public bands (numeric) get their own metric"
            " block in the final evaluation; each costs precision, not ε (docs/model.md)"
        ),
    )
    cuts: dict[str, list[float]] = Field(
        default={},
        description=(
            "declared band cut points of a numeric subgroup feature, strictly increasing and"
            " inside its (min, max); default: the midpoint of its bounds"
        ),
    )
    importance: bool = Field(
        default=False,
        description=(
            "also release one metric block per feature with that feature permuted within each"
            " site's held-out rows (federated permutation importance, ΔC per feature)"
        ),
    )

    @property
    def active(self) -> bool:
        """Whether the final evaluation releases anything beyond the consortium block."""
        return bool(self.subgroups) or self.importance


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_against_plan(value: EvaluationPlan, info: ValidationInfo) -> EvaluationPlan:
    """Every subgroup and cut names a plan feature of the right kind (pydantic gives the message
    the `evaluation` location; `federation.plan_messages` keeps the text as it is)."""
    features = {f.name: f for f in info.data.get("features") or []}
    names = list(features)
    if len(set(value.subgroups)) != len(value.subgroups):
        raise ValueError("subgroups: a feature is named twice")
    for name in value.subgroups:
        if name not in features:
            raise ValueError(
                f"subgroups: {name!r} is not a feature of this plan{_did_you_mean(name, names)}"
            )
    for name, cuts in value.cuts.items():
        feature = features.get(name)
        if name not in value.subgroups:
            hint = _did_you_mean(name, value.subgroups) if feature is None else ""
            raise ValueError(f"cuts: {name!r} is not one of the subgroups{hint}; add it there")
        if not isinstance(feature, NumericFeature):
            raise ValueError(f"cuts: {name!r} is categorical: it is split by its levels")
        if not cuts or any(not math.isfinite(c) for c in cuts):
            raise ValueError(f"cuts: {name!r} needs at least one finite cut point")
        if any(b <= a for a, b in itertools.pairwise(cuts)):
            raise ValueError(f"cuts: {name!r}'s cut points must be strictly increasing")
        if cuts[0] <= feature.min or cuts[-1] >= feature.max:
            raise ValueError(
                f"cuts: {name!r}'s cut points must lie inside its bounds {feature.bounds_text()}"
            )
        if len(cuts) + 2 > MAX_LEVELS:
            raise ValueError(f"cuts: {name!r} has more than {MAX_LEVELS - 2} cut points")
    for name in value.subgroups:
        feature = features[name]
        if isinstance(feature, CategoricalFeature) and len(feature.levels) + 1 > MAX_LEVELS:
            raise ValueError(
                f"subgroups: {name!r} has more than {MAX_LEVELS - 1} levels: too many blocks"
            )
    return value


EvaluationField = Annotated[EvaluationPlan, AfterValidator(check_against_plan)]
"""RunPlan's `evaluation` field type (declared after `features` and `training`)."""


@dataclass(frozen=True)
class Subgroup:
    """One subgroup feature's public levels, and how to read a row's level off the design matrix
    (the encoded columns of `survival.schema`: a numeric value (imputed if missing) and its
    missing indicator; a categorical's dummies against the first level and its indicator)."""

    feature: str
    labels: tuple[str, ...]
    column: int  # the feature's first encoded column
    cuts: tuple[float, ...]  # numeric: the band cut points, encoded (`transform`); categorical: ()
    numeric: bool
    optional: bool

    def assign(self, raw: np.ndarray) -> np.ndarray:
        """Each row's level index (into `labels`) from its encoded design-matrix row."""
        raw = np.asarray(raw, dtype=np.float64)
        if self.numeric:
            level = np.searchsorted(np.asarray(self.cuts), raw[:, self.column], side="right")
            width = 1
        else:
            width = len(self.labels) - 1 - int(self.optional)  # non-reference dummies
            dummies = raw[:, self.column : self.column + width]
            level = np.where(dummies.max(axis=1) > 0.5, dummies.argmax(axis=1) + 1, 0)
        if self.optional:
            missing = raw[:, self.column + width] > 0.5
            level = np.where(missing, len(self.labels) - 1, level)
        result: np.ndarray = np.asarray(level, dtype=np.int64)
        return result


def _band_labels(low: float, cuts: list[float], high: float) -> list[str]:
    edges = [low, *cuts, high]
    labels = [f"[{a:g}, {b:g})" for a, b in itertools.pairwise(edges)]
    labels[-1] = labels[-1][:-1] + "]"
    return labels


def subgroups(evaluation: EvaluationPlan, schema: FeatureSchema) -> tuple[Subgroup, ...]:
    """The plan's subgroup features with their levels, in the plan's order."""
    columns: dict[str, int] = {}
    index = 0
    for feature in schema.features:
        columns[feature.name] = index
        index += len(feature.encoded_names())
    by_name = {f.name: f for f in schema.features}
    out: list[Subgroup] = []
    for name in evaluation.subgroups:
        feature = by_name[name]
        optional = not feature.required
        if isinstance(feature, NumericFeature):
            cuts = list(evaluation.cuts.get(name) or [(feature.min + feature.max) / 2.0])
            labels = _band_labels(feature.min, cuts, feature.max)
            cuts = feature.encode(np.asarray(cuts)).tolist()  # membership reads the encoded column
        else:
            cuts, labels = [], list(feature.levels)
        if optional:
            labels.append(MISSING_LEVEL)
        out.append(
            Subgroup(
                name,
                tuple(labels),
                columns[name],
                tuple(cuts),
                isinstance(feature, NumericFeature),
                optional,
            )
        )
    return tuple(out)


def feature_columns(schema: FeatureSchema) -> dict[str, tuple[int, int]]:
    """Each feature's encoded columns [start, stop): what permutation importance permutes
    together (a categorical's dummies and any missing indicator move with their value)."""
    out: dict[str, tuple[int, int]] = {}
    index = 0
    for feature in schema.features:
        width = len(feature.encoded_names())
        out[feature.name] = (index, index + width)
        index += width
    return out
