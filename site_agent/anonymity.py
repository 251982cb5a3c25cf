"""The k-anonymity layer at a site: generalise the quasi-identifiers, suppress small classes.

Applied once, where the agent loads a run's rows (`site_agent.offer.PlanOffers._load`, and `check`
through `anonymise` too), so the statistics, training and evaluation releases of a run all read
the same generalised rows, and a reload after a restart gives the same rows again.

Generalisation depends on the plan alone (federation/plan_anonymity.py), never on the data:

- a numeric quasi-identifier's band edges are the plan's bounds cut into `bands` equal bands, or
  the plan's explicit `cuts`; each value is replaced by its band's midpoint, which lies inside
  the bounds, so standardisation and the model take it like any value. Band i is
  [edge_i, edge_i+1), the last one closed at max. An optional feature's missing entries keep the
  plan's fixed `impute` value and their indicator (a public constant, nothing to generalise).
- a categorical quasi-identifier's levels are mapped through the declared hierarchy (a level not
  listed keeps its own label); every row of a group is then encoded as the group's *first* level
  in the feature's declared order, so the one-hot columns stay exactly those of the plan (the
  other members' dummies are 0 at every site) and a site needs no new encoding.

Suppression then drops every row whose equivalence class (the generalised quasi-identifiers
together, over all the site's valid rows, both partitions) holds fewer than k rows.

The number of suppressed rows stays at the site: it is in the site's audit (`plan_accepted`,
key `k_anonymity`) and the `check` report. The suppressed rows are left out of the dataset as if
the export never had them (`n_rows` too), so a refusal's row summary, which is sent to the
coordinator, cannot be differenced into it; the releases see only the remaining rows, whose
counts leave only DP-noised.

The ledger's (ε, δ) holds for the rows a run reads. Generalisation is a per-row function of the
plan and keeps it exact; suppression is not: adding or removing one patient can bring in or drop
up to k − 1 others of its class, so against the export as a whole the formal guarantee is group
privacy over up to k patients (docs/gdpr.md, "k-anonymity", says so to the DPO).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from federation.plan import RunPlan
from federation.plan_anonymity import KAnonymityPlan
from site_agent.data import LocalDataset
from site_agent.data_audit import class_summary
from survival.schema import CategoricalFeature, Feature, FeatureSchema, NumericFeature

Key = tuple[float, ...]


def band_edges(feature: NumericFeature, layer: KAnonymityPlan) -> np.ndarray:
    """The public band edges of a numeric quasi-identifier: min, the cut points, max. They are a
    function of the plan only (the feature's bounds and the layer), never of a site's values."""
    if feature.name in layer.cuts:
        inner = np.asarray(layer.cuts[feature.name], dtype=np.float64)
    else:
        inner = np.linspace(feature.min, feature.max, layer.bands + 1)[1:-1]
    return np.concatenate([[feature.min], inner, [feature.max]])


def band_midpoints(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Each value (within [edges[0], edges[-1]]) replaced by its band's midpoint."""
    band = np.searchsorted(edges, values, side="right") - 1
    band = np.clip(band, 0, edges.size - 2)
    midpoints: np.ndarray = (edges[:-1] + edges[1:]) / 2.0
    return midpoints[band]


def group_representatives(feature: CategoricalFeature, layer: KAnonymityPlan) -> list[int]:
    """For each declared level (by index), the index of the level its rows are encoded as: the
    first level, in declared order, of the same generalised label."""
    mapping = layer.hierarchies.get(feature.name, {})
    labels = [mapping.get(level, level) for level in feature.levels]
    first: dict[str, int] = {}
    for index, label in enumerate(labels):
        first.setdefault(label, index)
    return [first[label] for label in labels]


def _generalise_categorical(
    feature: CategoricalFeature, layer: KAnonymityPlan, block: np.ndarray
) -> np.ndarray:
    n_dummies = len(feature.levels) - 1
    dummies = block[:, :n_dummies]
    level = np.where(dummies.any(axis=1), dummies.argmax(axis=1) + 1, 0)
    target = np.asarray(group_representatives(feature, layer))[level]
    out = block.copy()
    out[:, :n_dummies] = 0.0
    rows = np.flatnonzero(target > 0)
    out[rows, target[rows] - 1] = 1.0
    if not feature.required:  # a missing entry stays all zeros with its indicator
        missing = block[:, -1] > 0.5
        out[missing, :n_dummies] = 0.0
    return out


def _blocks(schema: FeatureSchema) -> list[tuple[Feature, slice]]:
    out: list[tuple[Feature, slice]] = []
    start = 0
    for feature in schema.features:
        width = len(feature.encoded_names())
        out.append((feature, slice(start, start + width)))
        start += width
    return out


def generalise(schema: FeatureSchema, layer: KAnonymityPlan, raw: np.ndarray) -> np.ndarray:
    """The design matrix with every quasi-identifier generalised (`FeatureSchema.raw_matrix`
    layout in and out; other columns untouched)."""
    out = np.array(raw, dtype=np.float64, copy=True)
    quasi = set(layer.quasi_identifiers)
    for feature, cols in _blocks(schema):
        if feature.name not in quasi:
            continue
        block = out[:, cols]
        if isinstance(feature, NumericFeature):
            value = band_midpoints(block[:, 0], feature.encode(band_edges(feature, layer)))
            if not feature.required:  # the imputed constant of a missing entry stays
                value = np.where(block[:, 1] > 0.5, block[:, 0], value)
            block[:, 0] = value
        else:
            block = _generalise_categorical(feature, layer, block)
        out[:, cols] = block
    return out


def class_keys(schema: FeatureSchema, quasi: Sequence[str], raw: np.ndarray) -> list[Key]:
    """Each row's equivalence class: its encoded quasi-identifier columns, together."""
    chosen = set(quasi)
    columns = [cols for feature, cols in _blocks(schema) if feature.name in chosen]
    if not columns or raw.shape[0] == 0:
        return [() for _ in range(raw.shape[0])]
    picked = np.concatenate([raw[:, cols] for cols in columns], axis=1).round(9)
    return [tuple(row) for row in picked.tolist()]


def suppression_mask(keys: Sequence[Key], k: int) -> np.ndarray:
    """bool per row: True = kept (its class holds at least k rows)."""
    sizes = Counter(keys)
    return np.fromiter((sizes[key] >= k for key in keys), dtype=bool, count=len(keys))


@dataclass(frozen=True)
class AnonymityReport:
    """What the layer did at this site: site-local, for the site's audit and `check` only."""

    k_target: int
    quasi_identifiers: list[str]
    k_before: int | None
    """The smallest class over the exact quasi-identifier values, before the layer."""
    k: int | None
    """The smallest class after generalisation and suppression (None: no row left)."""
    l: int | None  # noqa: E741 - l-diversity's own letter
    classes: int
    rows_suppressed: int

    def to_json(self) -> dict[str, Any]:
        """The `check` report's `k_anonymity` entry and the audit's record."""
        return {
            "k": self.k,
            "l": self.l,
            "quasi_identifiers": list(self.quasi_identifiers),
            "classes": self.classes,
            "k_target": self.k_target,
            "k_before": self.k_before,
            "rows_suppressed": self.rows_suppressed,
        }


@dataclass
class AnonymisedDataset(LocalDataset):
    """The run's rows after the k-anonymity layer, with what the layer did (never released)."""

    anonymity: AnonymityReport | None = None


def anonymise(plan: RunPlan, data: LocalDataset) -> LocalDataset:
    """The rows every release of this run reads: `data` itself without a layer in the plan;
    otherwise generalised, with the rows of classes smaller than k suppressed."""
    layer = plan.privacy.k_anonymity
    if layer is None:
        return data
    schema = plan.feature_schema
    before = class_summary(class_keys(schema, layer.quasi_identifiers, data.raw), data.event)
    raw = generalise(schema, layer, data.raw)
    keys = class_keys(schema, layer.quasi_identifiers, raw)
    keep = suppression_mask(keys, layer.k)
    after = class_summary(
        [key for key, kept in zip(keys, keep, strict=True) if kept], data.event[keep]
    )
    suppressed = int((~keep).sum())
    report = AnonymityReport(
        k_target=layer.k,
        quasi_identifiers=list(layer.quasi_identifiers),
        k_before=before.k,
        k=after.k,
        l=after.l,
        classes=after.classes,
        rows_suppressed=suppressed,
    )
    pseudonyms = data.pseudonyms
    if pseudonyms is not None and len(pseudonyms) == keep.size:
        pseudonyms = [p for p, kept in zip(pseudonyms, keep, strict=True) if kept]
    fields = {name: getattr(data, name) for name in LocalDataset.__dataclass_fields__}
    fields.update(
        raw=np.ascontiguousarray(raw[keep]),
        time=data.time[keep],
        event=data.event[keep],
        holdout=data.holdout[keep],
        n_rows=data.n_rows - suppressed,
        pseudonyms=pseudonyms,
    )
    return replace(AnonymisedDataset(**fields), anonymity=report)


def anonymity_record(data: LocalDataset) -> dict[str, Any] | None:
    """The layer's report for the site's audit entry, or None when the plan has no layer."""
    return (
        data.anonymity.to_json() if isinstance(data, AnonymisedDataset) and data.anonymity else None
    )
